"""Encoded images to the dataset's format in the graph: trainer/images.py, and
trainer.export.to_dataset_format, what the serving_default signature does to each file."""
import functools
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageFilter, ImageOps

from helpers import draw_seven, encode
from trainer import export, images
from trainer.keras_lib import keras

MNIST_SHAPE = (28, 28, 1)
RGB_SHAPE = (32, 32, 3)  # a colour model's input: no autocontrast hides a wrong scale


def as_served(data, image_shape=MNIST_SHAPE):
  """What a served model makes of a file's bytes, in the graph as the signature runs it."""
  return _converter(image_shape)(tf.constant(data)).numpy()


@functools.lru_cache(maxsize=None)
def _converter(image_shape):
  return tf.function(lambda encoded: export.to_dataset_format(encoded, image_shape))


@pytest.fixture(scope='module')
def sevens():
  """The same 7 dark-on-light (PNG and a larger RGB JPEG) and light-on-dark, as MNIST stores
  digits."""
  return {
      'dark_on_light.png': encode(draw_seven()),
      'light_on_dark.png': encode(ImageOps.invert(draw_seven())),
      'photo.jpg': encode(draw_seven((300, 400)).convert('RGB'), 'JPEG', quality=90),
  }


def test_a_gray_model_gets_light_strokes_on_black_whichever_way_round_the_file_is(sevens):
  from_paper = as_served(sevens['dark_on_light.png'])
  as_stored = as_served(sevens['light_on_dark.png'])
  from_photo = as_served(sevens['photo.jpg'])
  assert from_paper.shape == MNIST_SHAPE and from_paper.dtype == np.uint8
  assert np.abs(from_paper.astype(int) - as_stored).max() <= 1
  assert as_stored[0, 0, 0] == 0 and as_stored.max() == 255  # black background, white strokes
  assert np.abs(from_photo.astype(int) - as_stored).mean() < 8  # JPEG noise, another scale
  # Scaled to fit with the aspect kept: the 90x120 drawing's side columns are padding.
  assert (from_paper[:, :3] == from_paper[0, 0, 0]).all()
  assert (from_paper[:, 3:-3] > 128).any()


def test_a_colour_model_gets_the_picture_as_it_is(sevens):
  from_paper = as_served(sevens['dark_on_light.png'], RGB_SHAPE)
  assert from_paper.shape == RGB_SHAPE
  assert (from_paper[0, 0] == 230).all()  # the paper's own gray, not inverted, not stretched


def test_a_digit_as_mnist_stores_it_is_served_as_it_is():
  # Black background, strokes at full white with softer edges: nothing to invert or stretch.
  digit = np.zeros((28, 28), np.uint8)
  digit[6:22, 12:16] = 255
  digit[6:22, 11] = digit[6:22, 16] = np.linspace(20, 200, 16).astype(np.uint8)
  np.testing.assert_array_equal(as_served(encode(Image.fromarray(digit)))[..., 0], digit)


@pytest.mark.parametrize('image_shape', [MNIST_SHAPE, RGB_SHAPE])
def test_16_bit_pngs_keep_their_scale(image_shape):
  # Blurred, the 7 holds every gray level from ink to paper: a wrong scale shows in all of them.
  seven = draw_seven().filter(ImageFilter.GaussianBlur(4))
  # 257 = 65535 / 255: the same image at 16 bits, white still white.
  sixteen_bits = Image.fromarray(np.asarray(seven, np.uint16) * 257)
  assert sixteen_bits.mode == 'I;16'
  from_16_bits = as_served(encode(sixteen_bits), image_shape)
  from_8_bits = as_served(encode(seven), image_shape)
  assert np.abs(from_16_bits.astype(int) - from_8_bits).max() <= 1


def ink_on_transparency(mode, ink):
  """The 7 in gray `ink` on a transparent background that hides (nearly) the ink's colour.

  An alpha channel hides the ink's own colour, as drawing programs store it; a
  transparent key colour (PNG's tRNS in L and I;16) must differ from the ink, by one.
  Read without its transparency, the image is one flat colour.
  """
  if mode in ('L', 'I;16'):
    hidden = abs(ink - 1)
    scale = 257 if mode == 'I;16' else 1
    pixels = np.asarray(draw_seven(ink=ink, paper=hidden), np.uint16) * scale
    image = Image.fromarray(pixels.astype(np.uint8 if mode == 'L' else np.uint16))
    return encode(image, transparency=hidden * scale)
  image = Image.new('L', draw_seven().size, ink)
  image.putalpha(draw_seven(ink=255, paper=0))
  return encode(image.convert(mode))


@pytest.mark.parametrize('image_shape', [MNIST_SHAPE, RGB_SHAPE])
@pytest.mark.parametrize('ink', [0, 255])
@pytest.mark.parametrize('mode', ['LA', 'RGBA', 'L', 'I;16'])
def test_transparency_becomes_the_background_the_ink_is_not(mode, ink, image_shape):
  from_transparency = as_served(ink_on_transparency(mode, ink), image_shape)
  from_opaque = as_served(encode(draw_seven(ink=ink, paper=255 - ink)), image_shape)
  assert np.abs(from_transparency.astype(int) - from_opaque).max() <= 1


@pytest.mark.parametrize('file_format', ['GIF', 'BMP'])
def test_gif_and_bmp_are_read_too(sevens, file_format):
  np.testing.assert_allclose(as_served(encode(draw_seven(), file_format)),
                             as_served(sevens['dark_on_light.png']),
                             atol=1)


def exif_orientation(orientation, byte_order):
  """An EXIF block (as Pillow's `exif=` takes it) that holds only the orientation tag."""
  endian = '<' if byte_order == 'II' else '>'
  entry = struct.pack(endian + 'HHIHH', 0x0112, 3, 1, orientation, 0)
  return (b'Exif\x00\x00' + byte_order.encode() + struct.pack(endian + 'HI', 42, 8) +
          struct.pack(endian + 'H', 1) + entry + struct.pack(endian + 'I', 0))


# Pillow's transposition that stores an upright picture so that EXIF orientation N shows it.
STORED_AS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize('byte_order', ['II', 'MM'])
@pytest.mark.parametrize('orientation', range(2, 9))
def test_a_jpeg_is_turned_upright_as_its_exif_says(orientation, byte_order):
  upright = np.zeros((40, 60, 3), np.uint8)
  upright[:10, :30] = 255  # a block in the top-left corner, wider than high
  stored = Image.fromarray(upright).transpose(STORED_AS[orientation])
  photo = encode(stored, 'JPEG', quality=95, exif=exif_orientation(orientation, byte_order))
  served = images.decode_image(tf.constant(photo), 40, 60, 3).numpy().astype(int)
  assert np.abs(served - upright).mean() < 3, orientation


@pytest.mark.parametrize('data', [
    b'\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM\x00*\xff\xff\xff\xff',
    b'\xff\xd8\xff\xe1Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff',
    b'not an image',
])
def test_damaged_or_missing_exif_means_upright(data):
  assert int(images._exif_orientation(tf.constant(data))) == 1  # pylint: disable=protected-access


def test_autocontrast_finds_the_levels_pillow_finds():
  rng = np.random.default_rng(0)
  gray = rng.normal(120, 30, (28, 28)).clip(0, 255).astype(np.uint8)
  ours = images.autocontrast(tf.constant(gray[..., np.newaxis] / 255, tf.float32)).numpy()
  pillows = np.asarray(ImageOps.autocontrast(Image.fromarray(gray), cutoff=1))
  # Pillow rounds down through an 8-bit table; the graph keeps the fraction.
  assert np.abs(np.round(ours[..., 0] * 255) - pillows).max() <= 1
  flat = tf.fill((28, 28, 1), 0.5)
  np.testing.assert_array_equal(images.autocontrast(flat), flat)  # nothing to stretch


def test_only_an_image_brighter_at_its_border_than_its_centre_is_inverted():
  light_border = np.full((20, 20, 1), 0.8, np.float32)
  light_border[5:15, 5:15] = 0.1
  dark_border = 1 - light_border
  np.testing.assert_allclose(images.invert_if_light_background(light_border), dark_border)
  np.testing.assert_allclose(images.invert_if_light_background(dark_border), dark_border)


def test_bytes_of_no_image_format_fail_in_the_graph():
  with pytest.raises(tf.errors.InvalidArgumentError):
    as_served(b'not an image')


# ---- Folders and varying-size datasets: every format and mode to one stored shape


def random_rgb(height, width, seed=0):
  return Image.fromarray(
      np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def stored(data, channels=3, size=32, aspect='crop'):
  return images.decode_image(tf.constant(data), size, size, channels, aspect=aspect).numpy()


# (format, Pillow mode, channels the folder's vote counts: gray 1, colour 3)
FORMATS = [('JPEG', 'RGB', 3), ('JPEG', 'L', 1), ('PNG', 'RGB', 3), ('PNG', 'L', 1),
           ('PNG', 'LA', 1), ('PNG', 'RGBA', 3), ('PNG', 'P', 3), ('BMP', 'RGB', 3),
           ('GIF', 'P', 3), ('WEBP', 'RGB', 3)]


@pytest.mark.parametrize('file_format, mode, channels', FORMATS)
def test_each_format_and_mode_decodes_to_the_stored_shape(file_format, mode, channels):
  data = encode(random_rgb(20, 30).convert(mode), file_format)
  assert int(images.channel_count(tf.constant(data))) == channels
  for wanted in (1, 3):
    image = stored(data, wanted, size=40)
    assert image.shape == (40, 40, wanted) and image.dtype == np.uint8


def test_a_gif_is_read_at_its_first_frame():
  frames = [Image.new('RGB', (10, 10), (level, level, level)) for level in (20, 220)]
  data = encode(frames[0], 'GIF', save_all=True, append_images=frames[1:])
  assert abs(int(stored(data, 1, size=10).mean()) - 20) <= 1


def test_crop_keeps_the_centred_window_as_keras_crop_to_aspect_ratio_does():
  pixels = np.random.default_rng(1).integers(0, 256, (30, 50, 3)).astype(np.uint8)
  ours = stored(encode(Image.fromarray(pixels)), 3, 32, 'crop')
  keras_crop = keras.preprocessing.image.smart_resize(pixels.astype(np.float32), (32, 32),
                                                      interpolation='bicubic')
  assert np.abs(ours - np.clip(np.round(keras_crop), 0, 255)).mean() < 0.01
  # Shrinking: the window is the middle 30x30 of the 50 columns.
  wide = np.zeros((30, 50), np.uint8)
  wide[:, 10:40] = 255
  assert stored(encode(Image.fromarray(wide)), 1, 30, 'crop').min() == 255


def test_pad_keeps_the_whole_image_centred_on_its_border_colour():
  wide = np.full((30, 60), 40, np.uint8)
  wide[:, 20:40] = 200
  padded = stored(encode(Image.fromarray(wide)), 1, 30, 'pad')[..., 0]
  assert (padded[:6] == 40).all() and (padded[-6:] == 40).all()  # bars of the border's colour
  assert abs(int(padded[15, 15]) - 200) <= 1


def test_a_model_trained_on_files_is_served_files_as_it_was_trained_on_them(sevens):
  # dataset.json's aspect says the trainer fitted the files itself: no inversion, no stretch.
  data = tf.constant(sevens['dark_on_light.png'])
  served = export.to_dataset_format(data, MNIST_SHAPE, 'crop').numpy()
  np.testing.assert_array_equal(served, images.decode_image(data, 28, 28, 1, aspect='crop'))
  assert served[0, 0, 0] > 200  # the paper stays light
