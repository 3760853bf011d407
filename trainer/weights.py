"""ImageNet weights for the DenseNet121 backbone: Keras's cache, a download, or a local .h5 file.

Weights load by layer name into the backbone, which covers both files users have:
Keras's notop weights file, and a whole DenseNet121 with its top saved by
`model.save('x.h5')` (the article kept one on its drive). Every backbone layer
with weights must find them in the file, so a partial or foreign file fails loudly
instead of training from a half-random start.
"""
import hashlib
import os
import socket
from typing import Optional

import h5py
import tensorflow as tf
from absl import logging

from trainer import runs
from trainer.errors import UserError
from trainer.keras_lib import keras
from trainer.model import backbone_of

NOTOP_FILE = 'densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5'
NOTOP_MD5 = '30ee3e1110167f948a6b9946edeeb738'
ORIGIN = 'https://storage.googleapis.com/tensorflow/keras-applications/densenet/' + NOTOP_FILE
ORIGIN_HOST = 'storage.googleapis.com'
CHOICES_HELP = 'imagenet, none, the path of a .h5 file, or a finished run folder'


def keras_cache_dir() -> str:
  """Where keras.applications caches weights: $KERAS_HOME/models, else ~/.keras/models."""
  keras_home = os.environ.get('KERAS_HOME', os.path.join(os.path.expanduser('~'), '.keras'))
  return os.path.join(keras_home, 'models')


def resolve(spec: str) -> Optional[str]:
  """Turns --weights into a .h5 file path or a run folder, or None for a random start."""
  if spec == 'none':
    return None
  if spec == 'imagenet':
    return imagenet_file(keras_cache_dir())
  if tf.io.gfile.isdir(spec):
    if not runs.checkpoint_exists(runs.path(spec, runs.BEST_CHECKPOINT)):
      raise UserError(f'--weights={spec} is a folder but not a run with a checkpoint; give '
                      f'{CHOICES_HELP}')
    return spec
  if not os.path.isfile(spec):
    raise UserError(f'--weights={spec}: no such file; give {CHOICES_HELP}')
  return spec


def imagenet_file(cache_dir: str, timeout_s: float = 10) -> str:
  """The verified notop file in `cache_dir`, downloaded first if it is missing or damaged."""
  path = os.path.join(cache_dir, NOTOP_FILE)
  if os.path.isfile(path) and md5_of(path) == NOTOP_MD5:
    return path
  if not network_reachable(ORIGIN_HOST, timeout_s):
    raise UserError(_not_cached_message(cache_dir, f'{ORIGIN_HOST} cannot be reached'))
  try:
    return keras.utils.get_file(NOTOP_FILE,
                                ORIGIN,
                                file_hash=NOTOP_MD5,
                                cache_dir=cache_dir,
                                cache_subdir='')
  except Exception as e:  # pylint: disable=broad-except  (get_file raises bare Exceptions)
    raise UserError(
        _not_cached_message(cache_dir,
                            f'its download failed ({str(e).splitlines()[0][:200]})')) from None


def _not_cached_message(cache_dir, reason):
  return (f'ImageNet weights {NOTOP_FILE} are not in {cache_dir} and {reason}; '
          f'on a machine with a network run python -m trainer.fetch_weights --cache_dir=DIR, '
          f'copy DIR/{NOTOP_FILE} to {cache_dir}/ (or pass --weights=PATH)')


def network_reachable(host: str, timeout_s: float) -> bool:
  """A bounded probe, so an offline machine fails in seconds instead of hanging in a download."""
  try:
    socket.create_connection((host, 443), timeout=timeout_s).close()
    return True
  except OSError:
    return False


def md5_of(path: str) -> str:
  digest = hashlib.md5()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def load_into_backbone(backbone: keras.Model, path: str) -> int:
  """Loads a .h5 file or a run folder's backbone (see `resolve`) into `backbone`; returns how
  many layers took weights."""
  if tf.io.gfile.isdir(path):
    return _load_run_backbone(backbone, path)
  return _load_h5(backbone, path)


def _load_run_backbone(backbone: keras.Model, run_dir: str) -> int:
  """The backbone of a run's best checkpoint: a model pretrained by this project (on
  Fashion-MNIST, say) as the start of another run. Only the backbone: the adapter and the
  head belong to the other dataset. Another image size fits; DenseNet121 has no
  size-dependent weights without its top."""
  source = backbone_of(runs.load_best_model(run_dir))
  try:
    backbone.set_weights(source.get_weights())
  except ValueError as e:
    raise UserError(f'--weights={run_dir}: its backbone does not fit this model '
                    f'({str(e).splitlines()[0][:200]}); give a run of this trainer') from None
  logging.info('Loaded the backbone of %s', run_dir)
  return len([layer for layer in backbone.layers if layer.weights])


def _load_h5(backbone: keras.Model, path: str) -> int:
  needed = {layer.name for layer in backbone.layers if layer.weights}
  in_file = layer_names_with_weights(path)
  missing = needed - in_file
  if missing == needed:
    raise UserError(f'--weights={path} holds no weights for any DenseNet121 layer; '
                    'give a DenseNet121 weights file')
  if missing:
    raise UserError(
        f'--weights={path} lacks weights for {len(missing)} of the {len(needed)} '
        f'DenseNet121 layers (e.g. {sorted(missing)[0]}); give a whole DenseNet121 file')
  try:
    backbone.load_weights(path, by_name=True)
  except (ValueError, OSError) as e:  # a shape that does not fit; a damaged dataset in the file
    raise UserError(f'--weights={path} does not fit DenseNet121 ({str(e).splitlines()[0][:200]}); '
                    'give a DenseNet121 weights file') from None
  logging.info('Loaded %s into %d backbone layers', path, len(needed))
  return len(needed)


def layer_names_with_weights(path: str) -> set:
  """Layer names in a Keras .h5 weights file or whole-model file (both legacy layouts)."""
  try:
    with h5py.File(path, 'r') as f:
      group = f['model_weights'] if 'model_weights' in f else f
      if 'layer_names' not in group.attrs:
        raise UserError(f'--weights={path} is an HDF5 file but not a Keras weights file; '
                        f'give {CHOICES_HELP}')
      names = [_decode(n) for n in group.attrs['layer_names']]
      return {n for n in names if len(group[n].attrs.get('weight_names', ())) > 0}
  except OSError:
    raise UserError(f'--weights={path} is not a readable .h5 file (corrupt or truncated?); '
                    f'fetch it again or give {CHOICES_HELP}') from None


def _decode(name):
  return name.decode('utf8') if isinstance(name, bytes) else name
