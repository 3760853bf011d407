"""Trains a run of trainer.main to its end and records it (benchmarks/records.py).

  python -m benchmarks.accuracy --claim=mnist_accuracy --name=rgb64_seed0 \
      --run_dir=runs/rgb64_seed0 -- --flagfile=configs/mnist_rgb.cfg --weights=none

The flags after `--` go to trainer.main, with --run_dir added. Rerun the same command
after an interruption: trainer.main resumes the folder, and a finished run is only
recorded. The record (benchmarks/records/CLAIM/NAME.json) holds the command, the data,
the start, the settings, validation accuracy by epoch, the test figures and the wall time.
"""
import csv
import glob
import json
import os
import shlex
import subprocess
import sys
from typing import List

import tensorflow as tf
from absl import app, flags

from benchmarks import records


def define_flags() -> None:
  """Defined only when run as a command: trainer.main's --run_dir shares the name in tests."""
  flags.DEFINE_string('claim', None, 'The records folder (the results table) it belongs to.')
  flags.DEFINE_string('name', None, 'The record\'s name within the claim.')
  flags.DEFINE_string('run_dir', None, 'The run folder; passed on to trainer.main.')
  flags.DEFINE_string('data', None, 'What the data is, in words (default: the run\'s '
                      '--dataset).')
  flags.DEFINE_string(
      'commit', None, 'The commit that trained the run, if not this '
      'checkout\'s (a run trained elsewhere).')
  flags.DEFINE_bool('record_only', False, 'Record a finished run folder without running '
                    'trainer.main.')
  for required in ('claim', 'name', 'run_dir'):
    flags.mark_flag_as_required(required)


FLAGS = flags.FLAGS

METRICS_FILE = 'metrics.json'  # trainer.runs' names, read here without importing the trainer
CONFIG_FILE = 'config.json'
HISTORY_FILE = 'history.csv'


def train(run_dir: str, trainer_args: List[str]) -> None:
  """Runs trainer.main to the end of `run_dir`, unless it finished already."""
  if os.path.exists(os.path.join(run_dir, METRICS_FILE)):
    return
  command = [sys.executable, '-m', 'trainer.main', *trainer_args, f'--run_dir={run_dir}']
  if subprocess.run(command, cwd=records.REPO_ROOT, check=False).returncode:
    sys.exit(f'error: trainer.main stopped before the end of {run_dir}; rerun this command to '
             'resume it')


def run_record(run_dir: str, command: str, data: str) -> dict:
  """A finished run folder's settings, validation accuracy by epoch, test figures, wall time."""
  with open(os.path.join(run_dir, CONFIG_FILE)) as f:
    config = json.load(f)
  with open(os.path.join(run_dir, METRICS_FILE)) as f:
    metrics = json.load(f)
  return {
      'command': command,
      'data': data or config['dataset'],
      'start': 'random' if config['weights'] == 'none' else config['weights'],
      'adapter': config['model']['adapter'],
      'image_size': config['model']['image_size'],
      'seed': config['seed'],
      'epochs': config['epochs'],
      'val_accuracy': validation_by_epoch(run_dir),
      'test_accuracy': metrics['test_accuracy'],
      'test_loss': metrics['test_loss'],
      'wall_s': round(wall_seconds(run_dir)),
  }


def validation_by_epoch(run_dir: str) -> List[float]:
  """history.csv's val_accuracy, one per epoch; where a resumed run logged an epoch twice,
  the later row counts."""
  with open(os.path.join(run_dir, HISTORY_FILE)) as f:
    rows = [row for row in csv.DictReader(f) if row.get('val_accuracy')]
  by_epoch = {int(row['epoch']): round(float(row['val_accuracy']), 6) for row in rows}
  return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def wall_seconds(run_dir: str) -> float:
  """Seconds the run's processes spent between their first and last TensorBoard events, with
  the time between an interruption and its resume left out: the union of the event files'
  spans (each process writes files of its own)."""
  spans = []
  for path in glob.glob(os.path.join(run_dir, 'logs', '**', 'events.out.tfevents.*'),
                        recursive=True):
    times = [event.wall_time for event in tf.compat.v1.train.summary_iterator(path)]
    if times:
      spans.append((min(times), max(times)))
  total, end = 0.0, float('-inf')
  for first, last in sorted(spans):
    if last > end:
      total += last - max(first, end)
      end = last
  return total


def main(argv: List[str]) -> None:
  trainer_args = argv[1:]
  if not FLAGS.record_only:
    train(FLAGS.run_dir, trainer_args)
  if not os.path.exists(os.path.join(FLAGS.run_dir, METRICS_FILE)):
    sys.exit(f'error: {FLAGS.run_dir} has no {METRICS_FILE}: the run has not finished')
  command = shlex.join(
      ['python', '-m', 'trainer.main', *trainer_args, f'--run_dir={FLAGS.run_dir}'])
  record = run_record(FLAGS.run_dir, command, FLAGS.data)
  if FLAGS.commit:
    record['commit'] = FLAGS.commit
  print(records.write(FLAGS.claim, FLAGS.name, record))


if __name__ == '__main__':
  define_flags()
  app.run(main)
