"""--weights: exactly the file's values land in the backbone; every bad file ends in one clear error.

Offline throughout: the weight files are written here (conftest's notop_weights_file,
and a whole DenseNet121 with its top saved as the article saved it), and a test that
needs "no network" disables the sockets itself.
"""
import os
import shutil
import time
import warnings

import h5py
import numpy as np
import pytest
from absl import flags

from helpers import block_network, error_line, run_offline
from trainer import fetch_weights, weights
from trainer.config import ADAPTERS, HEADS, ModelConfig
from trainer.errors import UserError
from trainer.keras_lib import keras
from trainer.model import backbone_of, build_model

MODEL_KINDS = [(adapter, head) for adapter in ADAPTERS for head in HEADS]


@pytest.fixture(scope='module')
def models():
  """One model per adapter and head, built on first use (~8 s each) and shared by the tests."""
  built = {}

  def model(adapter, head):
    if (adapter, head) not in built:
      built[adapter, head] = build_model(ModelConfig(image_size=32, adapter=adapter, head=head),
                                         (28, 28, 1), 10)
    return built[adapter, head]

  return model


@pytest.fixture(scope='module')
def full_model_file(tmp_path_factory):
  """A seeded DenseNet121 with its 1000-class top, saved whole as the article did."""
  keras.utils.set_random_seed(4321)
  model = keras.applications.DenseNet121(weights=None)
  path = str(tmp_path_factory.mktemp('weights') / 'densenet121_with_top.h5')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # "HDF5 is legacy": it is the format being tested
    model.save(path)
  return path


def file_values(path):
  """{layer name: [arrays]} read straight from a Keras .h5 file, independently of Keras."""
  with h5py.File(path, 'r') as f:
    group = f['model_weights'] if 'model_weights' in f else f
    return {
        _text(layer): [
            group[_text(layer)][_text(name)][()]
            for name in group[_text(layer)].attrs['weight_names']
        ] for layer in group.attrs['layer_names']
    }


def _text(name):
  return name.decode() if isinstance(name, bytes) else name


def outside_backbone(model):
  """The adapter's and head's weights, which loading must leave alone."""
  return [w.numpy() for layer in model.layers if layer.name != 'densenet121' for w in layer.weights]


def assert_backbone_holds(model, path):
  values = file_values(path)
  layers = [layer for layer in backbone_of(model).layers if layer.weights]
  for layer in layers:
    assert len(layer.weights) == len(values[layer.name]), layer.name
    for weight, expected in zip(layer.weights, values[layer.name]):
      np.testing.assert_array_equal(weight.numpy(), expected, err_msg=weight.name)
  return len(layers)


@pytest.mark.parametrize('adapter, head', MODEL_KINDS)
@pytest.mark.parametrize('file', ['notop_weights_file', 'full_model_file'])
def test_the_file_values_land_in_the_backbone(models, adapter, head, file, request):
  path = request.getfixturevalue(file)
  model = models(adapter, head)
  keras.utils.set_random_seed(0)  # a fresh random start, so nothing passes by luck
  backbone_of(model).set_weights([
      np.random.normal(size=w.shape).astype(w.dtype.as_numpy_dtype)
      for w in backbone_of(model).weights
  ])
  before = outside_backbone(model)
  loaded = weights.load_into_backbone(backbone_of(model), weights.resolve(path))
  assert loaded == assert_backbone_holds(model, path) == 241  # DenseNet121's conv and BN layers
  for kept, now in zip(before, outside_backbone(model)):
    np.testing.assert_array_equal(kept, now)


# ---- --weights=imagenet: Keras's cache, verified by checksum; offline, a fast clear error.


def test_imagenet_with_an_empty_cache_and_no_network_fails_fast(tmp_path, monkeypatch):
  monkeypatch.setenv('KERAS_HOME', str(tmp_path))
  block_network(monkeypatch)
  start = time.perf_counter()
  with pytest.raises(UserError) as error:
    weights.resolve('imagenet')
  assert time.perf_counter() - start < 5
  message = str(error.value)
  assert f'{weights.NOTOP_FILE} are not in {tmp_path}/models' in message
  assert 'python -m trainer.fetch_weights --cache_dir=DIR' in message
  assert f'copy DIR/{weights.NOTOP_FILE} to {tmp_path}/models/' in message


def test_a_cached_file_with_the_wrong_checksum_is_not_trusted(tmp_path, monkeypatch,
                                                              notop_weights_file):
  monkeypatch.setenv('KERAS_HOME', str(tmp_path))
  block_network(monkeypatch)
  os.makedirs(tmp_path / 'models')
  shutil.copy(notop_weights_file, tmp_path / 'models' / weights.NOTOP_FILE)
  with pytest.raises(UserError, match='cannot be reached'):
    weights.resolve('imagenet')


def test_a_cached_file_with_the_right_checksum_is_used_offline(tmp_path, monkeypatch,
                                                               notop_weights_file, capsys):
  # The real file is 29 MB from the network; a test file stands in under its own checksum.
  monkeypatch.setattr(weights, 'NOTOP_MD5', weights.md5_of(notop_weights_file))
  monkeypatch.setenv('KERAS_HOME', str(tmp_path))
  attempts = block_network(monkeypatch)
  cached = tmp_path / 'models' / weights.NOTOP_FILE
  os.makedirs(cached.parent)
  shutil.copy(notop_weights_file, cached)
  assert weights.resolve('imagenet') == str(cached)
  flags.FLAGS(['fetch_weights'])
  fetch_weights.main(['fetch_weights'])
  assert capsys.readouterr().out.strip() == str(cached)
  assert not attempts


def test_fetch_weights_with_no_network_ends_in_one_line(tmp_path):
  result, seconds = run_offline('trainer.fetch_weights', f'--cache_dir={tmp_path}')
  line = error_line(result)
  assert f'{weights.NOTOP_FILE} are not in {tmp_path}' in line
  assert seconds < 30, seconds


# ---- Bad files: one clear error each, before any training.


def _corrupt(path, good):
  with open(path, 'wb') as f:
    f.write(np.random.default_rng(0).bytes(4096))


def _truncated(path, good):
  with open(good, 'rb') as f:
    content = f.read()
  with open(path, 'wb') as f:
    f.write(content[:len(content) // 2])


def _other_architecture(path, good):
  other = keras.Sequential([
      keras.Input((8,)),
      keras.layers.Dense(4, name='dense_a'),
      keras.layers.Dense(2, name='dense_b')
  ])
  other.save_weights(path)


def _wrong_shape(path, good):
  shutil.copy(good, path)
  with h5py.File(path, 'r+') as f:
    weights_of_conv1 = f['conv1/conv/conv1/conv']
    del weights_of_conv1['kernel:0']  # (7, 7, 3, 64) in DenseNet121
    weights_of_conv1['kernel:0'] = np.zeros((3, 3, 3, 64), np.float32)


def _layers_missing(path, good):
  shutil.copy(good, path)
  with h5py.File(path, 'r+') as f:
    names = [n for n in f.attrs['layer_names'] if _text(n) != 'conv5_block16_2_conv']
    f.attrs['layer_names'] = names


def _not_keras(path, good):
  with h5py.File(path, 'w') as f:
    f['data'] = np.zeros(3)


def _missing(path, good):
  pass


BAD_FILES = [
    (_corrupt, r'is not a readable .h5 file \(corrupt or truncated\?\)'),
    (_truncated, r'is not a readable .h5 file \(corrupt or truncated\?\)'),
    (_other_architecture, r'holds no weights for any DenseNet121 layer'),
    (_wrong_shape, r'does not fit DenseNet121 \(.*shape'),
    (_layers_missing, r'lacks weights for 1 of the 241 DenseNet121 layers '
     r'\(e.g. conv5_block16_2_conv\)'),
    (_not_keras, r'is an HDF5 file but not a Keras weights file'),
    (_missing,
     r'no such file; give imagenet, none, the path of a .h5 file, or a finished run folder'),
]


@pytest.mark.parametrize('damage, expected',
                         BAD_FILES,
                         ids=[damage.__name__.strip('_') for damage, _ in BAD_FILES])
def test_bad_weight_files_are_refused_with_the_problem_and_fix(models, tmp_path, notop_weights_file,
                                                               damage, expected):
  path = str(tmp_path / 'bad.h5')
  damage(path, notop_weights_file)
  with pytest.raises(UserError, match=expected):
    weights.load_into_backbone(backbone_of(models('rgb', 'gap')), weights.resolve(path))
