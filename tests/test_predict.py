"""python -m trainer.predict on image files the tests draw, through the export's serving_default
signature (what it does to each file: tests/test_images.py)."""
import glob
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageFilter, ImageOps

from helpers import draw_seven, encode, error_line, run_python
from trainer import export, predict, runs
from trainer.errors import UserError

MNIST_SHAPE = (28, 28, 1)


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
  return os.path.join(tiny_run, runs.EXPORT_DIR)


def test_predict_prints_a_class_and_probability_per_file(export_dir, digit_files):
  paths = list(digit_files.values())
  # What a client of the served model sends: the files' bytes, to serving_default.
  for path in paths:
    with open(path, 'rb') as f:
      assert predict.read_image(path) == f.read()
  predictions = predict.predict_files(export_dir, paths)

  assert [p['file'] for p in predictions] == paths
  for p in predictions:
    assert 0 <= p['class'] < 10 and p['class_name'] == str(p['class'])  # mock MNIST's names
    assert sum(p['probabilities']) == pytest.approx(1, abs=1e-4)
    assert p['probability'] == max(p['probabilities'])
  assert predictions[0]['class'] == predictions[1]['class']  # the same digit either way round
  assert predict.format_predictions(predictions).splitlines()[0] == (
      f'{paths[0]}: {predictions[0]["class_name"]} (class {predictions[0]["class"]}, '
      f'probability {predictions[0]["probability"]:.3f})')

  result = run_python('-m', 'trainer.predict', f'--model={export_dir}', '--json', *paths)
  assert result.returncode == 0, result.stderr
  printed = json.loads(result.stdout)
  assert [p['class'] for p in printed] == [p['class'] for p in predictions]
  np.testing.assert_allclose([p['probabilities'] for p in printed],
                             [p['probabilities'] for p in predictions],
                             atol=1e-6)


@pytest.mark.parametrize('mode', ['L', 'I;16'])
def test_formats_tensorflow_does_not_decode_go_as_png(tmp_path, mode):
  seven = draw_seven().filter(ImageFilter.GaussianBlur(4))
  pixels = np.asarray(seven, np.uint16) * (257 if mode == 'I;16' else 1)
  Image.fromarray(pixels.astype(np.uint16 if mode == 'I;16' else np.uint8)).save(tmp_path / 'a.tif')
  assert Image.open(tmp_path / 'a.tif').mode == mode

  sent = predict.read_image(str(tmp_path / 'a.tif'))
  assert sent.startswith(b'\x89PNG') and Image.open(tmp_path / 'a.tif').mode == mode
  as_png = export.to_dataset_format(tf.constant(sent), MNIST_SHAPE).numpy()
  as_8_bit_png = export.to_dataset_format(tf.constant(encode(seven)), MNIST_SHAPE).numpy()
  assert np.abs(as_png.astype(int) - as_8_bit_png).max() <= 1


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
  with pytest.raises(UserError, match='not one that this version of trainer.export wrote'):
    predict.predict_files(other_saved_model, [good])


def test_an_export_of_an_earlier_version_is_refused_naming_the_fix(tmp_path, digit_files):
  """Its serving_default took uint8 images: re-export it, as the error says."""
  earlier = tf.Module()
  earlier.serve = tf.function(lambda images: {'probabilities': tf.cast(images, tf.float32)},
                              input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.uint8)])
  tf.saved_model.save(earlier, str(tmp_path / 'export'), signatures=earlier.serve)
  with pytest.raises(UserError, match='export it again with python -m trainer.export'):
    predict.predict_files(str(tmp_path / 'export'), [digit_files['photo.jpg']])


def truncate(path, fraction=0.5):
  with open(path, 'r+b') as f:
    f.truncate(int(os.path.getsize(path) * fraction))


# Each of these ended in a traceback (OSError, FileNotFoundError, IndexError, ...).
DAMAGES = {
    'truncated_graph':
        lambda export: truncate(os.path.join(export, 'saved_model.pb')),
    'empty_graph':
        lambda export: truncate(os.path.join(export, 'saved_model.pb'), 0),
    'no_variables':
        lambda export: shutil.rmtree(os.path.join(export, 'variables')),
    'no_variables_index':
        lambda export: os.remove(os.path.join(export, 'variables', 'variables.index')),
    'no_variables_data':
        lambda export: [
            os.remove(path)
            for path in glob.glob(os.path.join(export, 'variables', 'variables.data*'))
        ],
    'truncated_variables_data':
        lambda export: [
            truncate(path)
            for path in glob.glob(os.path.join(export, 'variables', 'variables.data*'))
        ],
    'truncated_variables_index':
        lambda export: truncate(os.path.join(export, 'variables', 'variables.index')),
}


@pytest.mark.parametrize('damage', DAMAGES)
def test_a_damaged_export_is_refused_naming_the_run_to_export_again(tiny_run, tmp_path, damage,
                                                                    digit_files):
  run_dir = tmp_path / 'run'
  run_dir.mkdir()
  shutil.copy(os.path.join(tiny_run, runs.CONFIG_FILE), run_dir)
  export_dir = str(run_dir / runs.EXPORT_DIR)
  shutil.copytree(os.path.join(tiny_run, runs.EXPORT_DIR), export_dir)
  DAMAGES[damage](export_dir)
  with pytest.raises(UserError) as error:
    predict.predict_files(export_dir, [digit_files['photo.jpg']])
  assert str(error.value).startswith(f'{export_dir} is a damaged export (')
  assert str(
      error.value).endswith(f'; export it again with python -m trainer.export --run_dir={run_dir}')
  assert '\n' not in str(error.value)


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
  damaged = tmp_path / 'damaged'
  shutil.copytree(export_dir, damaged)
  truncate(damaged / 'saved_model.pb')
  good = digit_files['light_on_dark.png']
  for model, image, problem in [(export_dir, str(not_an_image), 'is not a readable image'),
                                (export_dir, str(tmp_path), 'is a folder'),
                                (str(tmp_path), good, 'is not a SavedModel'),
                                (str(damaged), good, 'is a damaged export')]:
    result = run_python('-m', 'trainer.predict', f'--model={model}', image)
    assert result.returncode == 1
    assert problem in error_line(result)
