"""Encoded image files to stored images: uint8 [size, size, channels], in the TensorFlow graph.

  decode_image(contents, channels, size, aspect)   JPEG, PNG, BMP, GIF, WebP bytes
  to_stored(image, channels, size, aspect)         an image decoded already (tfds datasets)

Both are plain TensorFlow ops with no dependency on the data pipeline: tf.data maps them
over folders and varying-size datasets (trainer/data.py), prepare_data stores their
output, and a serving signature that takes encoded images can call `decode_image` so that
it sees images exactly as training did.

What they do, in order:
  decode    TensorFlow's own decoders; a GIF's first frame; a palette PNG expanded to RGB or
            RGBA. 16-bit PNGs are rounded to 8 bits (v / 257), as trainer/predict.py does:
            TensorFlow's uint8 decode truncates (v >> 8).
  alpha     composited onto the background the ink is not, as predict does: black under
            light ink, white under dark ink (the opacity-weighted mean brightness decides;
            an image with nothing opaque lands on white).
  channels  gray copied to three channels, or RGB to gray with Pillow's weights (ITU-R 601).
  aspect    crop: the largest centred window of the target's aspect ratio, as Keras's
            `crop_to_aspect_ratio` takes it; pad: scaled to fit and padded with the median
            colour of the image's outermost pixels, as predict pads.
  resize    bicubic with antialiasing (Pillow's BICUBIC, predict's method, filters the same
            way when it shrinks), rounded once, at the end, to uint8.
"""
import tensorflow as tf

from trainer.config import ASPECTS

# Pillow's 'L' conversion (ITU-R 601-2 luma), which predict's images go through.
LUMA = (0.299, 0.587, 0.114)
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# A 16-bit channel value v is the 8-bit value v / 257 (65535 / 255).
SIXTEEN_TO_EIGHT_BITS = 257.0


def decode_image(contents: tf.Tensor, channels: int, size: int, aspect: str) -> tf.Tensor:
  """The encoded image `contents` (a scalar string) as uint8 [size, size, channels]."""
  return to_stored(decode(contents), channels, size, aspect)


def decode(contents: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, C] with C 1 (gray), 2 (gray, alpha), 3 (RGB) or 4 (RGBA), as the file stores it.

  Raises InvalidArgumentError (when run) for bytes no decoder reads.
  """
  is_png = tf.equal(tf.strings.substr(contents, 0, len(PNG_SIGNATURE)), PNG_SIGNATURE)
  # The PNG decoder widens 8-bit files exactly (v * 257), so one path serves both depths.
  image = tf.cond(
      is_png, lambda: _round_to_uint8(
          tf.cast(tf.io.decode_png(contents, dtype=tf.uint16), tf.float32) / SIXTEEN_TO_EIGHT_BITS),
      lambda: tf.io.decode_image(contents, expand_animations=False))
  image.set_shape([None, None, None])
  return image


def to_stored(image: tf.Tensor, channels: int, size: int, aspect: str) -> tf.Tensor:
  """uint8 [H, W, 1-4] (alpha last, if any) as uint8 [size, size, channels]."""
  if channels not in (1, 3):
    raise ValueError(f'channels must be 1 or 3, not {channels}')
  if aspect not in ASPECTS:
    raise ValueError(f'aspect must be one of {ASPECTS}, not {aspect!r}')
  rgb = _flatten_alpha(_as_rgba(image))
  pixels = rgb if channels == 3 else _luma(rgb)
  fitted = _crop_and_resize(pixels, size) if aspect == 'crop' else _pad_and_resize(pixels, size)
  stored = _round_to_uint8(fitted)
  stored.set_shape([size, size, channels])
  return stored


def channel_count(image: tf.Tensor) -> tf.Tensor:
  """1 for a gray image (with or without alpha), 3 for a colour one."""
  return tf.where(tf.shape(image)[-1] <= 2, 1, 3)


def _as_rgba(image):
  """float32 [H, W, 4] in 0-255 from 1 to 4 channels; opaque where the image has no alpha."""
  pixels = tf.cast(image, tf.float32)
  count = tf.shape(pixels)[-1]
  colour = tf.cond(count <= 2, lambda: tf.repeat(pixels[..., :1], 3, axis=-1),
                   lambda: pixels[..., :3])
  alpha = tf.cond(tf.equal(count % 2, 0), lambda: pixels[..., -1:],
                  lambda: tf.fill(tf.concat([tf.shape(pixels)[:2], [1]], axis=0), 255.0))
  return tf.concat([colour, alpha], axis=-1)


def _flatten_alpha(rgba):
  """float32 [H, W, 3]: transparent pixels take the background that the ink is not."""
  colour, opacity = rgba[..., :3], rgba[..., 3:] / 255.0
  # Dark ink on a transparent sheet goes onto white paper, light ink onto black.
  ink = tf.reduce_sum(_luma(colour) * opacity) / tf.maximum(tf.reduce_sum(opacity), 1.0 / 255.0)
  background = tf.where(ink >= 128.0, 0.0, 255.0)
  return colour * opacity + background * (1.0 - opacity)


def _luma(rgb):
  return tf.reduce_sum(rgb * tf.constant(LUMA), axis=-1, keepdims=True)


def _crop_and_resize(pixels, size):
  """The largest centred square window (Keras's `crop_to_aspect_ratio`), resized to `size`.

  Keras computes the window as min(height, width * target_height / target_width) by
  min(width, height * target_width / target_height), offset by half the difference rounded
  down; for the square stored images that is the centred square of the shorter side.
  """
  height, width = tf.shape(pixels)[0], tf.shape(pixels)[1]
  side = tf.minimum(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  window = pixels[top:top + side, left:left + side]
  return _resize(window, size, size)


def _pad_and_resize(pixels, size):
  """Scaled so the longer side is `size`, centred, padded with the border's median colour."""
  height, width = tf.shape(pixels)[0], tf.shape(pixels)[1]
  longer = tf.cast(tf.maximum(height, width), tf.float32)
  new_height = tf.maximum(1, tf.cast(tf.round(tf.cast(height, tf.float32) * size / longer),
                                     tf.int32))
  new_width = tf.maximum(1, tf.cast(tf.round(tf.cast(width, tf.float32) * size / longer), tf.int32))
  fill = _border_median(pixels)
  resized = _resize(pixels, new_height, new_width) - fill
  top, left = (size - new_height) // 2, (size - new_width) // 2
  padded = tf.pad(resized,
                  [[top, size - new_height - top], [left, size - new_width - left], [0, 0]])
  return padded + fill


def _border_median(pixels):
  """Per channel, the median of the outermost pixels (numpy's: the mean of the two middle
  values, rounded down as predict's astype(uint8) does)."""
  edges = tf.concat([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]], axis=0)
  ordered = tf.sort(edges, axis=0)
  count = tf.shape(ordered)[0]
  return tf.floor((ordered[(count - 1) // 2] + ordered[count // 2]) / 2.0)


def _resize(pixels, height, width):
  return tf.image.resize(pixels, tf.stack([height, width]), method='bicubic', antialias=True)


def _round_to_uint8(pixels):
  return tf.cast(tf.round(tf.clip_by_value(pixels, 0.0, 255.0)), tf.uint8)
