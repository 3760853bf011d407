"""Shared fixtures. DenseNet121 takes ~30 s to build and step on a 2-core CPU, so the
expensive things (a weights file, a finished tiny run) are built once per session."""
import os

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

# Two logical CPUs let MirroredStrategy tests run here; this must happen before
# anything else initialises TensorFlow's devices.
_cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from absl import flags  # noqa: E402

import helpers  # noqa: E402
from trainer import prepare_data  # noqa: E402
from trainer.keras_lib import keras  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_flags_and_policy():
  """Each test parses its own flags and starts from float32."""
  flags.FLAGS.unparse_flags()
  yield
  flags.FLAGS.unparse_flags()
  keras.mixed_precision.set_global_policy('float32')


@pytest.fixture
def mock_mnist():
  """tfds's mock MNIST: deterministic uint8 28x28x1 images, downloads blocked."""
  with tfds.testing.mock_data(num_examples=helpers.MOCK_EXAMPLES):
    yield


@pytest.fixture(scope='session')
def notop_weights_file(tmp_path_factory):
  """A seeded DenseNet121 saved the way keras.applications' notop .h5 files are."""
  keras.utils.set_random_seed(1234)
  backbone = keras.applications.DenseNet121(include_top=False,
                                            weights=None,
                                            input_shape=(32, 32, 3))
  path = str(tmp_path_factory.mktemp('weights') / 'densenet121_notop.h5')
  backbone.save_weights(path)
  return path


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory, notop_weights_file):
  """A finished two-epoch run of trainer.main on mock MNIST; returns its run folder."""
  root = tmp_path_factory.mktemp('tiny_run')
  run_dir = str(root / 'run')
  flags.FLAGS.unparse_flags()
  with tfds.testing.mock_data(num_examples=helpers.MOCK_EXAMPLES):
    metrics = helpers.train_with_flags(*helpers.TINY_FLAGS, '--adapter=rgb',
                                       f'--weights={notop_weights_file}', f'--run_dir={run_dir}',
                                       f'--data_dir={root / "tfds"}')
  flags.FLAGS.unparse_flags()
  # trainer.main set the run's policy (bfloat16 on some CPUs); the test that asked for this
  # fixture starts from float32 like every other.
  keras.mixed_precision.set_global_policy('float32')
  assert os.path.exists(os.path.join(run_dir, 'metrics.json')), metrics
  return run_dir


@pytest.fixture(scope='session')
def prepared_mnist(tmp_path_factory):
  """A small dataset in tfds's own on-disk format, prepared as `mnist` (1,000 train and 200
  test digits of random pixels): read from files the way a real download is, which
  tfds.testing.mock_data is not. Returns its --data_dir."""
  root = tmp_path_factory.mktemp('prepared_mnist')
  idx_dir = helpers.write_idx_dir(root / 'idx', *helpers.small_digits(1000, seed=0),
                                  *helpers.small_digits(200, seed=1))
  data_dir = str(root / 'tfds')
  prepare_data.prepare('mnist', data_dir, from_idx=idx_dir)
  return data_dir
