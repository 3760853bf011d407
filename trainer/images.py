"""Encoded images (PNG, JPEG, GIF, BMP, WebP) to a dataset's uint8 format, in the TensorFlow graph.

Everything here is TensorFlow ops on one image, with no Python and no Pillow, so it runs in
the two places that must treat a file alike: a tf.data map over folders of images and
varying-size datasets (trainer/data.py, trainer/folder.py), and the signature of a served
model that takes the bytes of a file, as TF Serving's REST API and Vertex AI carry them
({"b64": ...}) (trainer/export.py):

  decode (8 or 16 bits a channel; a JPEG turned upright) -> transparency onto a background
  -> gray or RGB -> [adjust] -> the target's aspect: crop (the largest centred window, as
  Keras's crop_to_aspect_ratio) or pad (all of it, on the border's colour) -> resize
  (bicubic, antialiased) -> uint8

For gray datasets stored light on dark, as MNIST is, `invert_if_light_background` and
`autocontrast` turn a photo or drawing of dark ink on paper into that form.
"""
from typing import Callable, Optional

import tensorflow as tf

from trainer.config import ASPECTS

# ITU-R 601-2 luma, as Pillow's convert('L'); the weights sum to 1, so gray stays gray.
LUMA = (0.299, 0.587, 0.114)
BORDER = 0.1  # invert_if_light_background: the outer tenth of each side is the border
CUTOFF_PERCENT = 1  # autocontrast: the share of darkest and of lightest pixels ignored
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
BMP_SIGNATURE = b'BM'
# A JPEG's EXIF block: after this header, in its first APP1 segment (at most 64 KiB) near
# the start, a TIFF header and a directory of 12-byte entries; tag 0x0112 says how to turn
# the pixels upright.
EXIF_HEADER = b'Exif\x00\x00'
EXIF_SEARCHED_BYTES = 65536
EXIF_ORIENTATION_TAG = 0x0112
EXIF_ENTRIES_READ = 64


def decode_image(encoded: tf.Tensor,
                 height: int,
                 width: int,
                 channels: int,
                 aspect: str = 'pad',
                 adjust: Optional[Callable[[tf.Tensor], tf.Tensor]] = None) -> tf.Tensor:
  """One encoded image as uint8 (height, width, channels), channels 1 (gray) or 3 (RGB).

  PNG (8 or 16 bits, palette, with an alpha channel or a transparent colour), JPEG, GIF
  (its first frame), BMP and WebP. Transparent pixels become the background the ink is
  not: white under dark ink, black under light. `aspect` makes the image the target's
  shape: 'crop' keeps the largest centred window of the target's aspect ratio (Keras's
  crop_to_aspect_ratio), 'pad' all of the image, scaled to fit and centred on its border's
  median colour (Pillow's ImageOps.pad). Resized bicubic, antialiased when shrinking.
  Bytes in no such format fail with InvalidArgumentError. A JPEG is turned upright as its
  EXIF orientation says.

  `adjust`, if given, maps the decoded image (float32 in [0, 1], at its own size, with
  `channels` channels) before it is fitted: where levels or polarity are changed.
  """
  if channels not in (1, 3):
    raise ValueError(f'channels must be 1 or 3, got {channels}')
  if aspect not in ASPECTS:
    raise ValueError(f'aspect must be one of {ASPECTS}, got {aspect!r}')
  rgb, alpha = _decode_rgb_and_alpha(encoded)
  # Phones store photos as the sensor saw them, with an EXIF note of how to turn them.
  rgb = _turn_upright(_flatten_transparency(rgb, alpha), _exif_orientation(encoded))
  image = tf.tensordot(rgb, tf.constant(LUMA), axes=[[-1], [0]])[..., tf.newaxis] \
      if channels == 1 else rgb
  if adjust is not None:
    image = adjust(image)
  image = _crop(image, height, width) if aspect == 'crop' else _fit_and_pad(image, height, width)
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)


def channel_count(encoded: tf.Tensor) -> tf.Tensor:
  """1 for a gray file (with or without alpha), 3 for a colour one (palettes are colour)."""
  image = tf.io.decode_image(encoded, expand_animations=False)
  return tf.where(tf.shape(image)[-1] <= 2, 1, 3)


def _decode_rgb_and_alpha(encoded):
  """float32 RGB in [0, 1] (16-bit PNGs at full precision) and its opacity, (h, w, 1)."""
  # Asked for four channels, PNG's decoder turns a transparent colour (tRNS) into alpha too;
  # JPEG and GIF have no alpha and refuse four.
  may_have_alpha = tf.logical_or(
      tf.equal(tf.strings.substr(encoded, 0, len(PNG_SIGNATURE)), PNG_SIGNATURE),
      tf.equal(tf.strings.substr(encoded, 0, len(BMP_SIGNATURE)), BMP_SIGNATURE))

  def rgba():
    image = tf.io.decode_image(encoded, channels=4, dtype=tf.float32, expand_animations=False)
    return image[..., :3], image[..., 3:]

  def rgb():
    # 8 bits a channel in these formats; decoded as uint8, which WebP's decoder insists on.
    image = tf.image.convert_image_dtype(
        tf.io.decode_image(encoded, channels=3, expand_animations=False), tf.float32)
    return image, tf.ones_like(image[..., :1])

  color, alpha = tf.cond(may_have_alpha, rgba, rgb)
  color.set_shape([None, None, 3])
  alpha.set_shape([None, None, 1])
  return color, alpha


def _flatten_transparency(rgb, alpha):
  """`rgb` over white where its ink (its opaque part) is dark, over black where it is light.

  Dropping the alpha instead shows the colour that transparent pixels hide, often the
  ink's own, and the stroke vanishes.
  """
  brightness = tf.tensordot(rgb, tf.constant(LUMA), axes=[[-1], [0]])[..., tf.newaxis]
  # A fully transparent image has no ink, and lands on white.
  ink = tf.reduce_sum(brightness * alpha) / tf.maximum(tf.reduce_sum(alpha), 1e-6)
  background = tf.where(ink >= 0.5, 0.0, 1.0)
  return rgb * alpha + background * (1.0 - alpha)


def _exif_orientation(encoded):
  """A JPEG's EXIF orientation, 1 (upright) to 8; 1 for other images and damaged EXIF."""
  head = tf.strings.substr(encoded, 0, EXIF_SEARCHED_BYTES)
  parts = tf.strings.split(head, sep=EXIF_HEADER.decode('latin-1'), maxsplit=1)
  tiff_size = tf.strings.length(parts[-1])
  # Zeros after the end keep every read below inside the string, whatever the offsets say.
  tiff = tf.strings.join([parts[-1], tf.constant(b'\x00' * (12 * EXIF_ENTRIES_READ + 16))])
  byte_order = tf.strings.substr(tiff, 0, 2)
  little_endian = tf.equal(byte_order, b'II')

  def unsigned(position, size):
    """The `size`-byte unsigned integer(s) at `position` (a number or a vector)."""
    position = tf.cast(position, tf.int64)
    raw = tf.strings.substr(tiff, position, tf.fill(tf.shape(position), tf.constant(size,
                                                                                    tf.int64)))
    raw = tf.io.decode_raw(raw, tf.uint8)
    place = tf.where(little_endian, tf.range(size, dtype=tf.int64),
                     tf.range(size - 1, -1, -1, dtype=tf.int64))
    return tf.reduce_sum(tf.cast(raw, tf.int64) *
                         tf.bitwise.left_shift(tf.constant(1, tf.int64), 8 * place),
                         axis=-1)

  directory = tf.minimum(unsigned(4, 4), tf.cast(tiff_size, tf.int64))
  entries = tf.minimum(unsigned(directory, 2), EXIF_ENTRIES_READ)
  index = tf.range(EXIF_ENTRIES_READ, dtype=tf.int64)
  entry = directory + 2 + 12 * index
  is_orientation = tf.logical_and(tf.equal(unsigned(entry, 2), EXIF_ORIENTATION_TAG), index
                                  < entries)
  orientation = tf.reduce_max(tf.where(is_orientation, unsigned(entry + 8, 2), 0))
  valid = tf.reduce_all([
      tf.io.is_jpeg(encoded),
      tf.equal(tf.size(parts), 2),
      tf.logical_or(little_endian, tf.equal(byte_order, b'MM')),
      orientation >= 1,
      orientation <= 8,
  ])
  return tf.where(valid, tf.cast(orientation, tf.int32), 1)


def _turn_upright(image, orientation):
  """`image` as EXIF `orientation` says to show it (Pillow's ImageOps.exif_transpose)."""
  swapped = lambda: tf.transpose(image, [1, 0, 2])
  return tf.switch_case(
      orientation - 1,
      [
          lambda: image,
          lambda: tf.reverse(image, [1]),  # mirrored
          lambda: tf.reverse(image, [0, 1]),  # upside down
          lambda: tf.reverse(image, [0]),  # upside down, mirrored
          swapped,  # transposed
          lambda: tf.reverse(swapped(), [1]),  # turned a quarter counter-clockwise
          lambda: tf.reverse(swapped(), [0, 1]),  # transposed the other way
          lambda: tf.reverse(swapped(), [0]),  # turned a quarter clockwise
      ])


def _fit_and_pad(image, height, width):
  """`image` scaled to fit (height, width) with its aspect kept, centred on its border's
  median colour: the placement of Pillow's ImageOps.pad."""
  shape = tf.shape(image)
  in_height, in_width = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
  wider = in_width * height > in_height * width
  # float64 and round half to even: Python's arithmetic, as in Pillow.
  new_height = tf.where(wider, tf.round(in_height / in_width * width), height)
  new_width = tf.where(wider, tf.cast(width, tf.float64), tf.round(in_width / in_height * height))
  new_height = tf.cast(tf.maximum(new_height, 1.0), tf.int32)
  new_width = tf.cast(tf.maximum(new_width, 1.0), tf.int32)
  fill = _border_median(image)
  # Antialiased: a photo shrunk to 28x28 without it keeps only scattered pixels of a stroke.
  resized = tf.image.resize(image,
                            tf.stack([new_height, new_width]),
                            method='bicubic',
                            antialias=True)
  top = tf.cast(tf.round(tf.cast(height - new_height, tf.float32) * 0.5), tf.int32)
  left = tf.cast(tf.round(tf.cast(width - new_width, tf.float32) * 0.5), tf.int32)
  # Zero padding of (image - fill), then + fill: padding with the fill colour.
  padded = tf.image.pad_to_bounding_box(resized - fill, top, left, height, width) + fill
  padded.set_shape([height, width, image.shape[-1]])
  return padded


def _crop(image, height, width):
  """The largest centred window of `height`:`width`'s aspect, resized to it: Keras's
  crop_to_aspect_ratio (window min(h, w * height / width) by min(w, h * width / height),
  truncated, its offsets half the difference rounded down)."""
  shape = tf.shape(image)
  in_height, in_width = shape[0], shape[1]
  crop_height = tf.minimum(in_height,
                           tf.cast(tf.cast(in_width, tf.float32) * height / width, tf.int32))
  crop_width = tf.minimum(in_width,
                          tf.cast(tf.cast(in_height, tf.float32) * width / height, tf.int32))
  top, left = (in_height - crop_height) // 2, (in_width - crop_width) // 2
  window = image[top:top + crop_height, left:left + crop_width]
  resized = tf.image.resize(window, (height, width), method='bicubic', antialias=True)
  resized.set_shape([height, width, image.shape[-1]])
  return resized


def _border_median(image):
  """The median colour of the outermost pixels, per channel (the background, to pad with)."""
  edges = tf.concat([image[0], image[-1], image[:, 0], image[:, -1]], axis=0)
  ordered = tf.sort(edges, axis=0)
  count = tf.shape(ordered)[0]
  return (ordered[(count - 1) // 2] + ordered[count // 2]) / 2.0


def invert_if_light_background(image: tf.Tensor) -> tf.Tensor:
  """`image` (H, W, C) in [0, 1] inverted if its border is brighter than its centre: dark
  ink on paper becomes light strokes on black, as MNIST stores digits."""
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  top = tf.cast(tf.round(tf.cast(height, tf.float32) * BORDER), tf.int32)
  left = tf.cast(tf.round(tf.cast(width, tf.float32) * BORDER), tf.int32)
  centre = image[top:height - top, left:width - left]
  border_sum = tf.reduce_sum(image) - tf.reduce_sum(centre)
  border_size = tf.size(image) - tf.size(centre)
  border_mean = border_sum / tf.cast(tf.maximum(border_size, 1), tf.float32)
  return tf.where(border_mean > tf.reduce_mean(centre), 1.0 - image, image)


def autocontrast(image: tf.Tensor, cutoff_percent: int = CUTOFF_PERCENT) -> tf.Tensor:
  """Gray `image` (H, W, 1) in [0, 1] stretched to span 0 to 1, ignoring `cutoff_percent` %
  of its darkest and of its lightest pixels, found at 8 bits as Pillow's
  ImageOps.autocontrast(cutoff=cutoff_percent) finds them.

  Gray datasets such as MNIST span black background to white strokes; a photo's paper is
  seldom black once inverted, nor its ink white. Stretched before the image is resized:
  afterwards, bicubic overshoot beside the strokes would count among the darkest pixels.
  """
  levels = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.int32)
  counts = tf.math.bincount(tf.reshape(levels, [-1]), minlength=256, maxlength=256)
  ignored = tf.size(levels) * cutoff_percent // 100
  # The lowest level left once `ignored` pixels are taken from the bottom, the highest once
  # as many are taken from the top.
  low = tf.reduce_sum(tf.cast(tf.cumsum(counts) <= ignored, tf.int32))
  high = tf.reduce_sum(tf.cast(tf.cumsum(counts, reverse=True) > ignored, tf.int32)) - 1
  low, high = tf.cast(low, tf.float32) / 255.0, tf.cast(high, tf.float32) / 255.0
  stretched = tf.clip_by_value((image - low) / tf.maximum(high - low, 1e-6), 0.0, 1.0)
  # An image of one level (after the cut) has no contrast to stretch.
  return tf.where(high > low, stretched, image)
