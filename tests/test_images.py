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
