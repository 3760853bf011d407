"""python -m trainer.predict on image files the tests draw."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from helpers import run_python
from trainer import predict
from trainer.errors import UserError

MNIST_SHAPE = (28, 28, 1)
RGB_SHAPE = (32, 32, 3)  # a colour model's input: no autocontrast hides a wrong scale


def draw_seven(size=(90, 120), ink=30, paper=230):
  """A 7 in dark ink on light paper, taller than wide, as a phone might photograph it."""
  width, height = size
  image = Image.new('L', size, paper)
  ImageDraw.Draw(image).line([(0.25 * width, 0.2 * height), (0.75 * width, 0.2 * height),
                              (0.4 * width, 0.8 * height)],
                             fill=ink,
                             width=width // 8)
  return image


def model_input(path, image_shape=MNIST_SHAPE, invert='auto'):
  return predict.to_model_input(predict.read_image(str(path)), image_shape, invert)


@pytest.fixture
def digit_files(tmp_path):
  """The same 7 dark-on-light (PNG and a larger JPEG) and light-on-dark, as MNIST stores it."""
  paths = {
      name: str(tmp_path / name) for name in ('dark_on_light.png', 'light_on_dark.png', 'photo.jpg')
  }
  draw_seven().save(paths['dark_on_light.png'])
  ImageOps.invert(draw_seven()).save(paths['light_on_dark.png'])
  draw_seven((300, 400)).convert('RGB').save(paths['photo.jpg'], quality=90)
  return paths


@pytest.fixture
def export_dir(tiny_run):
  return os.path.join(tiny_run, 'export')


def test_a_light_background_is_inverted_into_the_dataset_format(digit_files):
  from_paper = model_input(digit_files['dark_on_light.png'])
  as_stored = model_input(digit_files['light_on_dark.png'])
  assert from_paper.shape == MNIST_SHAPE and from_paper.dtype == np.uint8
  assert np.abs(from_paper.astype(int) - as_stored).max() <= 1
  assert as_stored[0, 0, 0] < 50 and as_stored.max() > 200  # dark background, light strokes
  assert model_input(digit_files['dark_on_light.png'], invert='no')[0, 0, 0] > 200
  assert model_input(digit_files['light_on_dark.png'], invert='yes')[0, 0, 0] > 200
  # Scaled to fit with the aspect kept: the 90x120 drawing's side columns are padding.
  assert np.abs(from_paper[:, :3].astype(int) - from_paper[0, 0, 0]).max() <= 1


def test_auto_inversion_compares_border_and_centre():
  light_border = np.full((20, 20), 200, np.uint8)
  light_border[5:15, 5:15] = 20
  dark_border = 255 - light_border
  assert predict.should_invert(Image.fromarray(light_border), 'auto')
  assert not predict.should_invert(Image.fromarray(dark_border), 'auto')
  assert not predict.should_invert(Image.fromarray(light_border).convert('RGB'), 'auto')
  assert predict.should_invert(Image.fromarray(dark_border), 'yes')
  assert not predict.should_invert(Image.fromarray(light_border), 'no')


@pytest.mark.parametrize('image_shape', [MNIST_SHAPE, RGB_SHAPE])
@pytest.mark.parametrize('extension', ['png', 'tif'])
def test_16_bit_images_are_rescaled_to_8_bits(tmp_path, extension, image_shape):
  # Blurred, the 7 holds every gray level from ink to paper: a wrong scale shows in all of them.
  seven = draw_seven().filter(ImageFilter.GaussianBlur(4))
  seven.save(tmp_path / f'8_bit.{extension}')
  # 257 = 65535 / 255: the same image at 16 bits, white still white.
  Image.fromarray(np.asarray(seven, np.uint16) * 257).save(tmp_path / f'16_bit.{extension}')
  assert Image.open(tmp_path / f'16_bit.{extension}').mode == 'I;16'

  from_16_bits = model_input(tmp_path / f'16_bit.{extension}', image_shape)
  from_8_bits = model_input(tmp_path / f'8_bit.{extension}', image_shape)
  assert np.abs(from_16_bits.astype(int) - from_8_bits).max() <= 1


def save_ink_on_transparency(path, mode, ink):
  """The 7 in gray `ink` on a transparent background that hides (nearly) the ink's colour.

  An alpha channel hides the ink's own colour, as drawing programs store it; a
  transparent key colour (PNG's tRNS in L and I;16) must differ from the ink, by one.
  Read without its transparency, the image is one flat colour.
  """
  if mode in ('L', 'I;16'):
    hidden = abs(ink - 1)
    scale = 257 if mode == 'I;16' else 1
    pixels = np.asarray(draw_seven(ink=ink, paper=hidden), np.uint16) * scale
    Image.fromarray(pixels.astype(np.uint8 if mode == 'L' else np.uint16)).save(
        path, transparency=hidden * scale)
  else:
    image = Image.new('L', draw_seven().size, ink)
    image.putalpha(draw_seven(ink=255, paper=0))
    image.convert(mode).save(path)


@pytest.mark.parametrize('image_shape', [MNIST_SHAPE, RGB_SHAPE])
@pytest.mark.parametrize('ink', [0, 255])
@pytest.mark.parametrize('mode', ['LA', 'RGBA', 'L', 'I;16'])
def test_transparency_becomes_the_background_the_ink_is_not(tmp_path, mode, ink, image_shape):
  save_ink_on_transparency(tmp_path / 'transparent.png', mode, ink)
  assert Image.open(tmp_path / 'transparent.png').mode == mode
  draw_seven(ink=ink, paper=255 - ink).save(tmp_path / 'opaque.png')

  from_transparency = model_input(tmp_path / 'transparent.png', image_shape)
  from_opaque = model_input(tmp_path / 'opaque.png', image_shape)
  assert np.abs(from_transparency.astype(int) - from_opaque).max() <= 1


def test_predict_prints_a_class_and_probability_per_file(export_dir, digit_files):
  paths = list(digit_files.values())
  predictions = predict.predict_files(export_dir, paths)

  assert [p['file'] for p in predictions] == paths
  for p in predictions:
    assert 0 <= p['class'] < 10
    assert sum(p['probabilities']) == pytest.approx(1, abs=1e-4)
    assert p['probability'] == max(p['probabilities'])
  assert predictions[0]['class'] == predictions[1]['class']  # the same digit either way round
  assert predict.format_predictions(predictions).splitlines()[0] == (
      f'{paths[0]}: {predictions[0]["class"]} (probability {predictions[0]["probability"]:.3f})')

  result = run_python('-m', 'trainer.predict', f'--model={export_dir}', '--json', *paths)
  assert result.returncode == 0, result.stderr
  printed = json.loads(result.stdout)
  assert [p['class'] for p in printed] == [p['class'] for p in predictions]
  np.testing.assert_allclose([p['probabilities'] for p in printed],
                             [p['probabilities'] for p in predictions],
                             atol=1e-6)


# ---- Bad input


def test_bad_inputs_are_refused(export_dir, digit_files, tmp_path):
  not_an_image = tmp_path / 'notes.png'
  not_an_image.write_text('not pixels')
  good = digit_files['light_on_dark.png']
  with pytest.raises(UserError, match='not a readable image'):
    predict.predict_files(export_dir, [good, str(not_an_image)])
  with pytest.raises(UserError, match='does not exist'):
    predict.predict_files(export_dir, [str(tmp_path / 'missing.png')])
  with pytest.raises(UserError, match='no image files'):
    predict.predict_files(export_dir, [])
  with pytest.raises(UserError, match='not a SavedModel'):
    predict.predict_files(str(tmp_path), [good])
  other_saved_model = str(tmp_path / 'other')
  tf.saved_model.save(tf.Module(), other_saved_model)
  with pytest.raises(UserError, match='not one that trainer.export wrote'):
    predict.predict_files(other_saved_model, [good])


def test_a_folder_is_refused(tmp_path):
  with pytest.raises(UserError, match='is a folder'):
    predict.read_image(str(tmp_path))


@pytest.mark.parametrize('limit', [10799, 5399])  # Pillow warns over its limit, raises over 2x
def test_an_image_over_the_decompression_bomb_limit_is_refused(tmp_path, monkeypatch, limit):
  path = str(tmp_path / 'seven.png')
  draw_seven().save(path)  # 90x120: 10,800 pixels
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', limit)
  with pytest.raises(UserError, match='too large'):
    predict.read_image(path)


@pytest.mark.parametrize('dtype, mode', [(np.float32, 'F'), (np.int32, 'I')])
def test_pixels_without_a_known_white_level_are_refused(tmp_path, dtype, mode):
  path = tmp_path / 'seven.tif'
  Image.fromarray((np.asarray(draw_seven()) / 255).astype(dtype)).save(path)  # white is 1
  assert Image.open(path).mode == mode
  with pytest.raises(UserError, match='white level'):
    predict.read_image(str(path))


def test_bad_inputs_on_the_command_line_end_in_one_line(export_dir, digit_files, tmp_path):
  not_an_image = tmp_path / 'notes.png'
  not_an_image.write_text('not pixels')
  good = digit_files['light_on_dark.png']
  for model, image, problem in [(export_dir, str(not_an_image), 'is not a readable image'),
                                (export_dir, str(tmp_path), 'is a folder'),
                                (str(tmp_path), good, 'is not a SavedModel')]:
    result = run_python('-m', 'trainer.predict', f'--model={model}', image)
    assert result.returncode == 1
    assert 'Traceback' not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith('error: ') and problem in last_line
