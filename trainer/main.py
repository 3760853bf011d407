"""Fine-tunes an ImageNet-pretrained DenseNet121 on MNIST (or another small image dataset).

  python -m trainer.main --adapter=rgb
  python -m trainer.main --flagfile=configs/mnist_conv.cfg --num_gpus=2
  tensorboard --logdir runs

The flags are the fields of trainer.config.TrainConfig. This module checks them, picks
the strategy and the run folder, and hands over to trainer.train.train_and_evaluate.
"""
# First: trainer.cli sets TensorFlow's environment, which TensorFlow reads as it loads.
from trainer import cli  # isort: skip

import contextlib
import dataclasses
import os
from typing import List, Optional

import tensorflow as tf
from absl import flags

from trainer import data, distribution, runs, train, weights
from trainer.config import TrainConfig
from trainer.errors import UserError

cli.define_flags(TrainConfig, __name__)
flags.register_multi_flags_validator(
    ['train_mode', 'frozen_epochs', 'epochs'],
    lambda f: f['train_mode'] != 'two_stage' or f['frozen_epochs'] < f['epochs'],
    message='--frozen_epochs must be below --epochs for --train_mode=two_stage; '
    'lower --frozen_epochs or raise --epochs')

flags.register_multi_flags_validator(
    ['freeze_batchnorm', 'weights'],
    lambda f: not f['freeze_batchnorm'] or f['weights'] != 'none',
    message='--freeze_batchnorm keeps the start\'s BatchNorm statistics, and --weights=none '
    'has none; give pretrained --weights or drop --freeze_batchnorm')


def _is_step_range(text):
  """'' (none), 'N' or 'FIRST,LAST' with 1 <= FIRST <= LAST: what keras' profile_batch takes."""
  if not text:
    return True
  steps = text.split(',')
  if len(steps) > 2 or not all(step.strip().isdigit() for step in steps):
    return False
  return 1 <= int(steps[0]) <= int(steps[-1])


flags.register_validator('profile_steps',
                         _is_step_range,
                         message='--profile_steps must be N or FIRST,LAST with 1 <= FIRST <= LAST '
                         '(e.g. 10,12), or empty for no profile')


def config_from_flags() -> TrainConfig:
  config = cli.config_from_flags(TrainConfig)
  return dataclasses.replace(config,
                             run_dir=config.run_dir or runs.default_run_dir(config.run_name))


def resolved_flags_text(config: TrainConfig) -> str:
  """This run's settings as a flagfile, so `--flagfile=runs/X/flags.cfg` resumes or repeats
  the run: with the run folder it resolved to, not the default named after the start time."""
  settings = [
      flags.FLAGS[name].serialize() for name in cli.flag_names(TrainConfig) if name != 'run_dir'
  ]
  return '\n'.join([*settings, f'--run_dir={config.run_dir}']) + '\n'


def run(splits_override: Optional[data.Splits] = None,
        strategy_override: Optional[tf.distribute.Strategy] = None) -> dict:
  """Trains as the flags say; tests inject small datasets and strategies."""
  config = config_from_flags()
  distribution.check_shared_run_dir(
      bool(flags.FLAGS.run_dir or config.run_name or os.environ.get(runs.VERTEX_MODEL_DIR)))
  # The strategy comes first: it fixes which devices TensorFlow initialises.
  strategy = strategy_override or distribution.make_strategy(config.num_gpus,
                                                             config.collective_timeout)
  distribution.set_precision(distribution.resolve_precision(config.precision, config.num_gpus))
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise UserError(f'--batch_size={config.batch_size} does not split evenly over {replicas} '
                    f'replicas; use a multiple of {replicas}')
  chief = distribution.is_chief(strategy)
  # The chief alone owns the run folder; the other workers stop with it if it is refused.
  with runs.locked(config.run_dir) if chief else contextlib.nullcontext():
    if chief:
      runs.check_resumable(config)
    # Before the data: missing weights should fail in seconds, not after a dataset download.
    start_weights = weights.resolve(config.weights)
    splits = splits_override or data.splits_for(config)
    with distribution.lost_workers_as_user_errors(), runs.resources_as_user_errors(config.run_dir):
      return train.train_and_evaluate(config, splits, strategy, start_weights,
                                      resolved_flags_text(config))


def main(_: List[str]) -> None:
  run()


def entry_point() -> None:
  """The console script (see setup.cfg); python -m trainer.main runs it too."""
  cli.run(main, on_interrupt='rerun the same command to resume from the last finished epoch')


if __name__ == '__main__':
  entry_point()
