"""The SavedModel a run exports, python -m trainer.export, and the commands' shared bad input."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from helpers import run_python
from trainer import evaluate, export, runs
from trainer.config import DatasetInfo
from trainer.errors import UserError
from trainer.keras_lib import keras
from trainer.model import backbone_of

MNIST_SHAPE = (28, 28, 1)

# Serves raw digits with nothing but TensorFlow: no trainer code, no Keras.
SERVE_IN_FRESH_PROCESS = """
import sys
import numpy as np
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']
outputs = serve(images=tf.constant(np.load(sys.argv[2])))
spec = serve.structured_input_signature[1]['images']
assert not [m for m in sys.modules if m.split('.')[0] in ('trainer', 'tf_keras')], 'not TF alone'
np.savez(sys.argv[3], probabilities=outputs['probabilities'].numpy(),
         classes=outputs['classes'].numpy(), input_shape=spec.shape.as_list()[1:],
         input_dtype=spec.dtype.name)
"""


def copy_run(run_dir, destination, *names):
  """A copy of some of a run folder's files and folders."""
  os.makedirs(destination)
  for name in names:
    source = os.path.join(run_dir, name)
    copy = shutil.copytree if os.path.isdir(source) else shutil.copy
    copy(source, os.path.join(destination, name))
  return str(destination)


@pytest.fixture(scope='module')
def raw_digits():
  return np.random.default_rng(0).integers(0, 256, (6, *MNIST_SHAPE), dtype=np.uint8)


@pytest.fixture(scope='module')
def keras_probabilities(tiny_run, raw_digits):
  """What the trained Keras model (the run's best checkpoint) says about `raw_digits`."""
  return runs.load_best_model(tiny_run).predict_on_batch(raw_digits)


def test_run_folder_records_the_dataset_and_keeps_the_keras_model(tiny_run, raw_digits,
                                                                  keras_probabilities):
  info = runs.read_dataset_info(tiny_run)
  assert info == DatasetInfo(MNIST_SHAPE, 10, tuple(str(i) for i in range(10)))
  # Loads with no custom_objects: the file holds the model without training's custom loss.
  kept = keras.models.load_model(os.path.join(tiny_run, runs.KERAS_MODEL_FILE))
  np.testing.assert_allclose(kept.predict_on_batch(raw_digits), keras_probabilities, atol=1e-5)


def test_saved_model_in_a_fresh_tensorflow_process_matches_the_keras_model(
    tiny_run, tmp_path, raw_digits, keras_probabilities):
  np.save(tmp_path / 'digits.npy', raw_digits)
  result = run_python('-c', SERVE_IN_FRESH_PROCESS, os.path.join(tiny_run, runs.EXPORT_DIR),
                      str(tmp_path / 'digits.npy'), str(tmp_path / 'served.npz'))
  assert result.returncode == 0, result.stderr
  served = np.load(tmp_path / 'served.npz')
  assert served['input_shape'].tolist() == list(MNIST_SHAPE)
  assert str(served['input_dtype']) == 'uint8'
  np.testing.assert_allclose(served['probabilities'], keras_probabilities, atol=1e-5)
  np.testing.assert_array_equal(served['classes'], keras_probabilities.argmax(axis=-1))


def test_export_command_needs_only_the_run_folder(tiny_run, tmp_path, raw_digits,
                                                  keras_probabilities):
  # A subprocess sees no mock data and the run's data_dir holds no dataset, so the
  # shape and classes can only come from dataset.json.
  run_dir = copy_run(tiny_run, tmp_path / 'run', 'config.json', runs.DATASET_FILE, 'checkpoints')
  result = run_python('-m', 'trainer.export', f'--run_dir={run_dir}')
  assert result.returncode == 0, result.stderr
  assert os.path.exists(os.path.join(run_dir, runs.KERAS_MODEL_FILE))
  serve = tf.saved_model.load(os.path.join(run_dir, runs.EXPORT_DIR)).signatures[export.SIGNATURE]
  probabilities = serve(images=tf.constant(raw_digits))['probabilities'].numpy()
  np.testing.assert_allclose(probabilities, keras_probabilities, atol=1e-5)


def test_a_mixed_precision_run_exports_a_float32_model(tiny_run, tmp_path, raw_digits,
                                                       keras_probabilities):
  """Served in float32 whatever the training precision (serving machines may lack fast
  bfloat16), and the same model whichever way it was exported."""
  run_dir = copy_run(tiny_run, tmp_path / 'run', 'config.json', runs.DATASET_FILE, 'checkpoints')
  keras.mixed_precision.set_global_policy('mixed_bfloat16')  # as trainer.main leaves it
  export.export_run(run_dir)
  assert keras.mixed_precision.global_policy().name == 'mixed_bfloat16'  # restored
  kept = keras.models.load_model(os.path.join(run_dir, runs.KERAS_MODEL_FILE))
  assert {layer.compute_dtype for layer in backbone_of(kept).layers} == {'float32'}
  serve = tf.saved_model.load(os.path.join(run_dir, runs.EXPORT_DIR)).signatures[export.SIGNATURE]
  np.testing.assert_allclose(serve(images=tf.constant(raw_digits))['probabilities'].numpy(),
                             keras_probabilities,
                             atol=1e-6)


# ---- Bad input


@pytest.mark.parametrize('command, function', [('trainer.export', export.export_run),
                                               ('trainer.evaluate', evaluate.evaluate_run)])
def test_a_run_folder_without_a_checkpoint_is_refused_in_one_line(tiny_run, tmp_path, command,
                                                                  function):
  run_dir = copy_run(tiny_run, tmp_path / 'run', 'config.json', runs.DATASET_FILE)
  with pytest.raises(UserError, match='no checkpoint'):
    function(run_dir)
  result = run_python('-m', command, f'--run_dir={run_dir}')
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(f'error: {run_dir} has no checkpoint')


def test_a_run_folder_without_dataset_json_is_refused(tiny_run, tmp_path):
  run_dir = copy_run(tiny_run, tmp_path / 'run', 'config.json', 'checkpoints')
  with pytest.raises(UserError, match='no dataset.json'):
    export.export_run(run_dir)


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
  with pytest.raises(UserError, match='not a run folder'):
    export.export_run(str(tmp_path))


def test_dataset_json_round_trips(tmp_path):
  runs.write_dataset_info(str(tmp_path), DatasetInfo((32, 32, 3), 3, ('cat', 'dog', 'bird')))
  assert runs.read_dataset_info(str(tmp_path)) == DatasetInfo((32, 32, 3), 3,
                                                              ('cat', 'dog', 'bird'))
  assert json.loads((tmp_path / runs.DATASET_FILE).read_text())['image_shape'] == [32, 32, 3]
