"""Run folders: where a run's outputs live, and the rule that a folder belongs to one run.

An existing folder is resumed (BackupAndRestore picks up the last finished epoch),
but only by the same configuration: a different one, or a finished run, is refused
rather than overwritten.
"""
import dataclasses
import datetime
import json
import os

import tensorflow as tf

from trainer import export
from trainer.errors import UserError
from trainer.keras_lib import keras
from trainer.model import ModelConfig, build_model
from trainer.train import BEST_CHECKPOINT, METRICS_FILE, TrainConfig

CONFIG_FILE = 'config.json'
FLAGS_FILE = 'flags.cfg'
# These may change between a run and its resumption without changing what it trains.
RESUMABLE_CHANGES = ('data_dir', 'download', 'export', 'profile_steps')


def default_run_dir(run_name: str = '') -> str:
  return os.path.join('runs', run_name or datetime.datetime.now().strftime('%Y%m%d-%H%M%S'))


def claim(config: TrainConfig, flags_text: str, chief: bool = True):
  """Refuses a finished or differently configured run folder; records the configuration.

  Only the chief claims: the other workers of a multi-worker run would race it for the
  files it writes here, and they stop with it (they lose contact) when it refuses.
  """
  if not chief:
    return
  run_dir = config.run_dir
  if tf.io.gfile.exists(os.path.join(run_dir, METRICS_FILE)):
    raise UserError(f'{run_dir} holds a finished run; choose a new --run_name or --run_dir, or '
                    f'inspect it with python -m trainer.evaluate --run_dir={run_dir}')
  if tf.io.gfile.exists(os.path.join(run_dir, CONFIG_FILE)):
    changed = _changed_fields(load_config(run_dir), config)
    if changed:
      raise UserError(f'{run_dir} was started with other settings ({", ".join(changed)}); resume '
                      f'it with --flagfile={os.path.join(run_dir, FLAGS_FILE)} or choose a new '
                      '--run_name')
    print(f'Resuming the run in {run_dir}')
  tf.io.gfile.makedirs(run_dir)
  _write(os.path.join(run_dir, CONFIG_FILE), json.dumps(dataclasses.asdict(config), indent=2))
  _write(os.path.join(run_dir, FLAGS_FILE), flags_text)


def load_config(run_dir: str) -> TrainConfig:
  path = os.path.join(run_dir, CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    raise UserError(f'{run_dir} is not a run folder (no {CONFIG_FILE}); give the folder that '
                    'python -m trainer.main wrote, e.g. runs/NAME')
  with tf.io.gfile.GFile(path) as f:
    fields = json.load(f)
  return TrainConfig(**{**fields, 'model': ModelConfig(**fields['model'])})


def load_best_model(run_dir: str) -> keras.Model:
  """The run's model with its best checkpoint's weights, built from the run folder alone."""
  config = load_config(run_dir)
  checkpoint = os.path.join(run_dir, BEST_CHECKPOINT)
  if not tf.io.gfile.exists(checkpoint + '.index'):
    raise UserError(f'{run_dir} has no checkpoint yet ({checkpoint}.index is missing); wait for '
                    'its first epoch to finish, or train it with python -m trainer.main')
  dataset = export.read_dataset_info(run_dir)
  model = build_model(config.model, dataset.image_shape, dataset.num_classes)
  # The checkpoint also holds the optimizer's state, which inference does not need.
  model.load_weights(checkpoint).expect_partial()
  return model


def _changed_fields(old: TrainConfig, new: TrainConfig):
  old, new = dataclasses.asdict(old), dataclasses.asdict(new)
  return [k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k]]


def _write(path, text):
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write(text)
