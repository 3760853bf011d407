"""trainer.main's recipe against a plain tf_keras script at equal budget (issue 10, item 2).

  python -m benchmarks.recipe_vs_script [--data_dir=/work/data/tfds] [--output=FILE] [--quick]

Both sides train the same model (trainer.model.build_model, 32x32) from the same start
(--weights: a random start by default, since ImageNet's weights need a network; or a
finished run folder, e.g. a Fashion-MNIST run, as a pretrained stand-in) on the same real
digits: the first 4,000 of tfds mnist's train split, written as IDX files, of which the last
800 are the validation set (as trainer.main's --validation_split=0.2 takes them), and the
first 1,000 of its test split.
Batch 64, 2 epochs, seed 0 on every row.

  plain script   Adam(1e-4) constant, sparse categorical crossentropy, model.fit, the
                 last epoch's weights tested; also with the backbone frozen, the reference
                 of --train_mode=transfer, and frozen for one epoch, then all layers at
                 Adam(1e-5) (the Keras fine-tuning guide's two steps), that of two_stage
  trainer.main   configs/mnist_recipe.cfg with the sizes above (`python -m trainer.main`,
                 its best validation checkpoint tested), then variants of its flags (from a
                 pretrained start, BatchNorm frozen too); the variant with the best
                 last-epoch validation accuracy (never the test accuracy) runs again without
                 augmentation (what that costs here); --train_mode=transfer and two_stage
                 run at the defaults and at that variant

Seconds are each row's whole process, start-up and test included. --quick uses a tenth of
the digits: a smoke check of the code, not figures to quote.
"""
import csv
import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from benchmarks import baseline
from benchmarks.measure import REPO_ROOT, emit, machine_description, run_child
from trainer import data, idx, weights
from trainer.config import ModelConfig
from trainer.keras_lib import keras
from trainer.model import backbone_of, build_model, set_backbone_trainable

flags.DEFINE_string('data_dir', '/work/data/tfds', "tensorflow-datasets' folder with mnist "
                    'prepared; read with no network.')
flags.DEFINE_string('output', None, 'Also write the table to this file.')
flags.DEFINE_string(
    'work_dir', None, 'Where the IDX files, run folders and logs go (default: '
    'a new temporary folder).')
flags.DEFINE_string(
    'weights', 'none', "Both sides' backbone start, as trainer.main's --weights: none, a .h5 "
    'file or a finished run folder.')
flags.DEFINE_bool('quick', False, 'A tenth of the digits: a smoke check of the code.')

FLAGS = flags.FLAGS

TRAIN_DIGITS, TEST_DIGITS = 4000, 1000  # train includes the validation digits
VALIDATION_SPLIT = 0.2  # trainer.main's default: the last 800 of the 4,000
IMAGE_SIZE, BATCH_SIZE, EPOCHS, SEED = 32, 64, 2, 0
RECIPE = 'configs/mnist_recipe.cfg'
PLAIN_LEARNING_RATE = 1e-4
PLAIN_UNFROZEN_LEARNING_RATE = PLAIN_LEARNING_RATE / 10  # the recipe's 10:1 for two_stage
FROZEN_EPOCHS = 1
# Flag changes tried against the recipe. --learning_rate is the peak for a batch of 256
# (x 64/256 here); two_stage's unfrozen rate moves with it, keeping the recipe's 10:1.
VARIANTS = {
    'lr x2': ['--learning_rate=8e-3', '--unfrozen_learning_rate=8e-4'],
    'no BatchNorm recalibration': ['--recalibrate_batchnorm=0'],
}
# Only from a pretrained start: a random one has no statistics to keep.
PRETRAINED_VARIANTS = {"frozen BatchNorm (the Keras guide's way)": ['--freeze_batchnorm']}
OTHER_MODES = {
    'transfer': ['--train_mode=transfer'],
    'two_stage': ['--train_mode=two_stage', f'--frozen_epochs={FROZEN_EPOCHS}']
}

# ---- The subset, as IDX files both sides read


def write_subset(data_dir, directory, fraction):
  """The first digits of mnist's train and test splits, as the four gzip IDX files."""
  builder = data.prepared_builder('mnist', data_dir, download=False)
  splits = {'train': round(TRAIN_DIGITS * fraction), 'test': round(TEST_DIGITS * fraction)}
  for split, count in splits.items():
    images, labels = data.in_memory(
        builder.as_dataset(split=f'{split}[:{count}]', as_supervised=True))
    prefix = idx.SPLIT_PREFIXES[split]
    _write_idx(os.path.join(directory, f'{prefix}-images-idx3-ubyte.gz'),
               images.numpy()[..., 0], idx.IMAGES_MAGIC)
    _write_idx(os.path.join(directory, f'{prefix}-labels-idx1-ubyte.gz'), labels.numpy(),
               idx.LABELS_MAGIC)


def _write_idx(path, array, magic):
  with gzip.open(path, 'wb') as f:
    f.write(struct.pack(f'>{1 + array.ndim}I', magic, *array.shape))
    f.write(array.astype(np.uint8).tobytes())


# ---- The two sides, each in a process of its own


def plain_script(p):
  """The reference: what a tf_keras user writes around the same model, and nothing more."""
  (x, y), (x_test, y_test) = baseline.load_arrays(f'idx:{p["idx_dir"]}')
  x, x_test = x[..., None], x_test[..., None]  # the model takes HxWx1
  num_train = round(len(y) * (1 - VALIDATION_SPLIT))
  keras.utils.set_random_seed(SEED)
  model = build_model(ModelConfig(image_size=IMAGE_SIZE), x.shape[1:], 10)
  start = weights.resolve(p['weights'])
  if start:
    weights.load_into_backbone(backbone_of(model), start)

  def fit(backbone_trainable, learning_rate, epochs, initial_epoch=0):
    set_backbone_trainable(model, backbone_trainable)
    model.compile(keras.optimizers.Adam(learning_rate),
                  'sparse_categorical_crossentropy',
                  metrics=['accuracy'])
    return model.fit(x[:num_train],
                     y[:num_train],
                     BATCH_SIZE,
                     epochs,
                     verbose=2,
                     initial_epoch=initial_epoch,
                     validation_data=(x[num_train:], y[num_train:])).history

  if p['mode'] == 'two_stage':
    histories = [
        fit(False, PLAIN_LEARNING_RATE, FROZEN_EPOCHS),
        fit(True, PLAIN_UNFROZEN_LEARNING_RATE, EPOCHS, FROZEN_EPOCHS)
    ]
  else:
    histories = [fit(p['mode'] == 'finetune', PLAIN_LEARNING_RATE, EPOCHS)]
  _, test_accuracy = model.evaluate(x_test, y_test, BATCH_SIZE, verbose=0)
  return {
      'train_accuracy': histories[-1]['accuracy'][-1],
      'val_accuracy': [v for history in histories for v in history['val_accuracy']],
      'test_accuracy': test_accuracy
  }


def run_plain(idx_dir, mode, log_path):
  start = time.monotonic()
  result = run_child(
      'benchmarks.recipe_vs_script',
      ['plain', json.dumps({
          'idx_dir': idx_dir,
          'mode': mode,
          'weights': FLAGS.weights
      })], log_path)
  return {**result, 'seconds': time.monotonic() - start}


def run_trainer(idx_dir, extra_flags, run_dir, log_path):
  """`python -m trainer.main` with the recipe at this benchmark's sizes; its history and test."""
  command = [
      sys.executable, '-m', 'trainer.main', f'--flagfile={RECIPE}', f'--dataset=idx:{idx_dir}',
      f'--weights={FLAGS.weights}', f'--image_size={IMAGE_SIZE}', f'--batch_size={BATCH_SIZE}',
      f'--epochs={EPOCHS}', f'--seed={SEED}', '--noexport', f'--run_dir={run_dir}', *extra_flags
  ]
  start = time.monotonic()
  with open(log_path, 'w') as log:
    proc = subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
  seconds = time.monotonic() - start
  if proc.returncode:
    with open(log_path) as f:
      tail = ''.join(f.readlines()[-25:])
    raise RuntimeError(f'{" ".join(command)} failed (exit {proc.returncode}):\n{tail}')
  with open(os.path.join(run_dir, 'history.csv')) as f:
    history = list(csv.DictReader(f))
  with open(os.path.join(run_dir, 'metrics.json')) as f:
    metrics = json.load(f)
  return {
      'train_accuracy': float(history[-1]['accuracy']),
      'val_accuracy': [float(row['val_accuracy']) for row in history],
      'test_accuracy': metrics['test_accuracy'],
      'seconds': seconds
  }


# ---- The table


def measure(work_dir, idx_dir):
  """Rows of (name, flags, result), in the order they ran."""
  logs = os.path.join(work_dir, 'logs')
  os.makedirs(logs, exist_ok=True)
  rows = []

  def plain(name, mode):
    print(f'running: {name}', file=sys.stderr, flush=True)
    result = run_plain(idx_dir, mode, os.path.join(logs, f'{len(rows)}.log'))
    print(f'result: {json.dumps(result)}', file=sys.stderr, flush=True)
    rows.append((name, '', result))

  def trainer(name, extra_flags):
    print(f'running: {name}', file=sys.stderr, flush=True)
    run_dir = os.path.join(work_dir, 'runs', str(len(rows)))
    result = run_trainer(idx_dir, extra_flags, run_dir, os.path.join(logs, f'{len(rows)}.log'))
    print(f'result: {json.dumps(result)}', file=sys.stderr, flush=True)
    rows.append((name, ' '.join(extra_flags), result))
    return result

  variants = {'recipe defaults': [], **VARIANTS}
  if FLAGS.weights != 'none':
    variants.update(PRETRAINED_VARIANTS)
  plain('plain script, finetune', 'finetune')
  finetune = {
      name: trainer(f'trainer.main finetune, {name}', variant) for name, variant in variants.items()
  }
  # Chosen on validation accuracy: the test digits only report.
  best = max(finetune, key=lambda name: finetune[name]['val_accuracy'][-1])
  # Not a candidate (the recipe augments for its 10 epochs on 48,000 digits): how much of
  # what is left of the gap the augmentation costs at this budget.
  trainer(f'trainer.main finetune, {best}, no augmentation', variants[best] + ['--noaugment'])
  for mode, mode_flags in OTHER_MODES.items():
    plain(f'plain script, {mode}', mode)
    for name in dict.fromkeys(['recipe defaults', best]):
      trainer(f'trainer.main {mode}, {name}', variants[name] + mode_flags)
  return rows


def table(rows):
  epochs = len(rows[0][2]['val_accuracy'])
  lines = [
      '| Run | Flags on top of the recipe | ' +
      ' | '.join(f'Val acc. epoch {e + 1}' for e in range(epochs)) +
      ' | Train acc. last epoch (training mode) | Test acc. | Seconds |',
      '| --- | --- | ' + '---: | ' * epochs + '---: | ---: | ---: |'
  ]
  for name, extra_flags, result in rows:
    vals = ' | '.join(f'{v:.3f}' for v in result['val_accuracy'])
    lines.append(f'| {name} | {f"`{extra_flags}`" if extra_flags else ""} | {vals} | '
                 f'{result["train_accuracy"]:.3f} | {result["test_accuracy"]:.3f} | '
                 f'{result["seconds"]:.0f} |')
  return '\n'.join(lines) + '\n'


def report(rows, fraction):
  machine = machine_description()
  train = round(TRAIN_DIGITS * fraction)
  validation = round(train * VALIDATION_SPLIT)
  head = [
      f'- {machine["date"]}{", quick smoke run: not figures to quote" if fraction < 1 else ""}',
      f'- Machine: {machine["cpu"]}, {machine["cores"]} cores; Python {machine["python"]}, '
      f'TensorFlow {tf.__version__}, tf_keras {keras.__version__}',
      f'- Data: real MNIST (tfds `mnist`), {train - validation} train / {validation} '
      f'validation digits (the first {train} of its train split), test on the first '
      f'{round(TEST_DIGITS * fraction)} of its test split; {IMAGE_SIZE}x{IMAGE_SIZE}, batch '
      f'{BATCH_SIZE}, {EPOCHS} epochs, --weights={FLAGS.weights}, --seed={SEED}.',
      f'- trainer.main rows: `python -m trainer.main --flagfile={RECIPE} '
      f'--dataset=idx:DIR --weights={FLAGS.weights} --image_size={IMAGE_SIZE} --batch_size={BATCH_SIZE} '
      f'--epochs={EPOCHS} --seed={SEED} --noexport` plus the flags shown; test accuracy is '
      'the best validation checkpoint\'s. Plain script: build_model, '
      f'Adam({PLAIN_LEARNING_RATE:g}) constant, model.fit, its last epoch tested; transfer: '
      f'the backbone frozen; two_stage: frozen for {FROZEN_EPOCHS} epoch(s), then every layer '
      f'at Adam({PLAIN_UNFROZEN_LEARNING_RATE:g}).', ''
  ]
  return '\n'.join(head) + '\n' + table(rows)


def main(argv):
  if len(argv) == 3 and argv[1] == 'plain':  # the child process of run_plain
    emit(plain_script(json.loads(argv[2])))
    return
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  work_dir = os.path.abspath(FLAGS.work_dir or tempfile.mkdtemp(prefix='recipe_vs_script_'))
  idx_dir = os.path.join(work_dir, 'idx')
  os.makedirs(idx_dir, exist_ok=True)
  fraction = 0.1 if FLAGS.quick else 1.0
  write_subset(FLAGS.data_dir, idx_dir, fraction)
  text = report(measure(work_dir, idx_dir), fraction)
  print(text, end='')
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      f.write(text)
  print(f'run folders and logs: {work_dir}', file=sys.stderr)


if __name__ == '__main__':
  app.run(main)
