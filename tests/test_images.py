"""trainer/images.py: every format and mode a folder may hold becomes one stored uint8 shape,
the way trainer.predict and Keras would make it."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from trainer import images, predict
from trainer.keras_lib import keras


def encode(image, file_format, **options):
  buffer = io.BytesIO()
  image.save(buffer, file_format, **options)
  return buffer.getvalue()


def random_rgb(height, width, seed=0):
  pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
  return Image.fromarray(pixels)


def stored(contents, channels=3, size=32, aspect='crop'):
  return images.decode_image(tf.constant(contents), channels, size, aspect).numpy()


# (format, Pillow mode, channels of the decoded file)
FORMATS = [
    ('JPEG', 'RGB', 3),
    ('JPEG', 'L', 1),
    ('PNG', 'RGB', 3),
    ('PNG', 'L', 1),
    ('PNG', 'LA', 2),
    ('PNG', 'RGBA', 4),
    ('PNG', 'P', 3),  # palette, expanded
    ('BMP', 'RGB', 3),
    ('GIF', 'P', 3),
    ('WEBP', 'RGB', 3),
]


@pytest.mark.parametrize('file_format, mode, channels', FORMATS)
def test_each_format_and_mode_decodes_to_the_stored_shape(file_format, mode, channels):
  contents = encode(random_rgb(20, 30).convert(mode), file_format)
  assert images.decode(tf.constant(contents)).shape[-1] == channels
  for wanted in (1, 3):
    image = stored(contents, wanted, size=40)
    assert image.shape == (40, 40, wanted) and image.dtype == np.uint8


def test_pixels_come_through_as_pillow_reads_them():
  source = random_rgb(16, 16)
  for file_format in ('PNG', 'BMP', 'GIF', 'WEBP', 'JPEG'):
    options = {'lossless': True} if file_format == 'WEBP' else {}
    contents = encode(
        source.convert('P') if file_format == 'GIF' else source, file_format, **options)
    decoded = images.decode(tf.constant(contents)).numpy().astype(int)
    expected = np.asarray(Image.open(io.BytesIO(contents)).convert('RGB'))
    if file_format == 'JPEG':  # the two libraries upsample JPEG's colour planes differently
      assert np.abs(decoded - expected).mean() < 2
    else:
      np.testing.assert_array_equal(decoded, expected)


def test_a_gif_is_read_at_its_first_frame():
  frames = [Image.new('RGB', (10, 10), (level, level, level)) for level in (20, 220)]
  contents = encode(frames[0], 'GIF', save_all=True, append_images=frames[1:])
  assert abs(int(stored(contents, 1, size=10).mean()) - 20) <= 1


def test_sixteen_bit_pngs_are_rounded_as_predict_rounds_them():
  """TensorFlow's uint8 decode truncates (v >> 8); predict, and so training, rounds v / 257."""
  levels = np.arange(0, 65536, 4, dtype=np.uint16).reshape(128, 128)
  decoded = images.decode(tf.constant(encode(Image.fromarray(levels), 'PNG'))).numpy()[..., 0]
  np.testing.assert_array_equal(decoded, np.asarray(predict._to_8_bits(Image.fromarray(levels))))
  assert (decoded != levels >> 8).any()
  eight_bits = np.arange(256, dtype=np.uint8).reshape(16, 16)
  np.testing.assert_array_equal(
      images.decode(tf.constant(encode(Image.fromarray(eight_bits), 'PNG'))).numpy()[..., 0],
      eight_bits)


@pytest.mark.parametrize('ink, paper', [(20, 255), (235, 0)])
def test_transparency_becomes_the_background_the_ink_is_not_as_in_predict(ink, paper):
  pixels = np.zeros((40, 40, 4), np.uint8)
  pixels[10:30, 15:25] = (ink, ink, ink, 255)
  pixels[5:8, 5:35] = (ink, ink, ink, 128)  # half transparent
  image = Image.fromarray(pixels, 'RGBA')
  ours = stored(encode(image, 'PNG'), 1, size=40, aspect='pad')[..., 0]
  theirs = np.asarray(predict._flatten_transparency(image).convert('L'))
  assert np.abs(ours.astype(int) - theirs).max() <= 1
  assert ours[0, 0] == paper and abs(int(ours[20, 20]) - ink) <= 1


def test_gray_is_copied_to_rgb_and_rgb_becomes_gray_as_pillow_weighs_it():
  source = random_rgb(24, 24)
  gray = stored(encode(source, 'PNG'), 1, size=24)[..., 0]
  np.testing.assert_allclose(gray, np.asarray(source.convert('L')), atol=1)
  rgb = stored(encode(source.convert('L'), 'PNG'), 3, size=24)
  assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_crop_keeps_the_centred_square_as_keras_crop_to_aspect_ratio_does():
  pixels = np.random.default_rng(1).integers(0, 256, (30, 50, 3)).astype(np.uint8)
  ours = images.to_stored(tf.constant(pixels), 3, 32, 'crop').numpy()
  keras_crop = keras.preprocessing.image.smart_resize(pixels.astype(np.float32), (32, 32),
                                                      interpolation='bicubic')
  assert np.abs(ours - np.clip(np.round(keras_crop), 0, 255)).mean() < 0.01
  # Shrinking: the window is the middle 30x30 of the 50 columns.
  wide = np.zeros((30, 50, 1), np.uint8)
  wide[:, 10:40] = 255
  assert images.to_stored(tf.constant(wide), 1, 30, 'crop').numpy().min() == 255


def test_pad_keeps_the_whole_image_and_pads_with_its_border_as_predict_does():
  source = Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 50), dtype=np.uint8))
  ours = stored(encode(source, 'PNG'), 1, size=32, aspect='pad')[..., 0]
  theirs = np.asarray(
      ImageOps.pad(source, (32, 32),
                   method=Image.Resampling.BICUBIC,
                   color=predict._border_color(source)))
  assert ours[0, 0] == theirs[0, 0] == predict._border_color(source)
  assert np.abs(ours.astype(int) - theirs).mean() < 0.5


def test_bytes_that_are_no_image_fail_when_decoded():
  with pytest.raises(tf.errors.InvalidArgumentError):
    images.decode(tf.constant(b'not an image'))
  with pytest.raises(tf.errors.InvalidArgumentError):
    images.decode(tf.constant(encode(random_rgb(8, 8), 'PNG')[:40]))  # truncated
