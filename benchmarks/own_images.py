"""Own images: real digits and clothes as folders of image files, against their IDX files;
a streamed split against the same split held in memory.

  python -m benchmarks.own_images --work_dir=/tmp/own_images            # all (about an hour here)
  python -m benchmarks.own_images --work_dir=/tmp/own_images --quick    # the same code, tiny sizes
  python -m benchmarks.own_images --work_dir=/tmp/own_images --parts=throughput,memory

The parts, each recorded with benchmarks.records.write('own_images', NAME, record):
  folders     MNIST (--mnist_idx) and Fashion-MNIST (--fashion_idx, Debian's
              dataset-fashion-mnist) written as class folders, train/ and test/ as the IDX
              files split them: PNG or JPEG at random square sides of 20-120 pixels, a share
              in colour (tinted ink). Then the time trainer/folder.py takes to list and scan
              them (every file decoded): scan_<data>.
  accuracy    trainer.main from a random start at 32x32, on each folder and on its IDX files
              at an equal budget (the same flags, epochs and test images): test accuracy and
              wall time, accuracy_<data>_<folder|idx>.
  throughput  training images/s at 64x64 of the same model on the MNIST folder prepared once
              (prepare_data), held in memory and streamed from its shards, in alternating
              fit calls of 50 steps (the first 5 of each left out): the median of the step
              rates and the mean over the steps kept, throughput_64.
  memory      host RSS while streaming that training split under a memory budget far below
              its size, sampled as batches go by; and after reading it into memory instead:
              memory_streaming.
Every figure printed or recorded comes from the run itself.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from benchmarks import records
from benchmarks.measure import images_per_second, peak_rss_bytes, rss_bytes

CLAIM = 'own_images'
PARTS = ('folders', 'accuracy', 'throughput', 'memory')
DATASETS = ('mnist', 'fashion_mnist')
FASHION_CLASSES = ('T-shirt-top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                   'Sneaker', 'Bag', 'Ankle boot')
SIDES = (20, 120)  # random square sides of the written images
COLOUR_SHARE = 0.25
JPEG_QUALITY = 90
ACCURACY_FLAGS = ['--weights=none', '--image_size=32', '--batch_size=128', '--seed=0', '--noexport']
THROUGHPUT_SIZE = 64
THROUGHPUT_BATCH = 64


def sizes(quick: bool) -> dict:
  """How much of everything: the full run, or a smoke run of the same code."""
  if quick:
    return dict(train=300,
                test=100,
                epochs=1,
                accuracy_flags=['--steps_per_epoch=2', '--eval_steps=2'],
                chunk_steps=6,
                warmup_steps=2,
                rounds=2,
                memory_batches=40,
                sample_every=10,
                budget_mb=0.1)
  return dict(
      train=None,
      test=None,
      epochs=2,
      accuracy_flags=[],
      # Long calls, as fit's one iterator a stage is: a new iterator reads its first
      # shuffle windows of 16 MiB before its first batch, and the next in the background.
      chunk_steps=50,
      warmup_steps=5,
      rounds=4,
      memory_batches=1500,
      sample_every=50,
      budget_mb=16)


# ---- Writing folders


def class_names(dataset: str) -> Tuple[str, ...]:
  return tuple(str(i) for i in range(10)) if dataset == 'mnist' else FASHION_CLASSES


def read_idx(idx_dir: str, count=None) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """{'train', 'test'}: uint8 images (N, 28, 28, 1) and labels, read by trainer/idx.py."""
  from trainer import idx  # pylint: disable=import-outside-toplevel  (TensorFlow: only here)
  arrays = {}
  for name, ds in zip(('train', 'test'), idx.load_idx_dir(idx_dir)):
    limit = count[name] if count else None
    images, labels = [], []
    for batch_images, batch_labels in ds.take(limit or -1).batch(10_000).as_numpy_iterator():
      images.append(batch_images)
      labels.append(batch_labels)
    arrays[name] = np.concatenate(images), np.concatenate(labels)
  return arrays


def write_image(image: np.ndarray, path_stem: str, rng: np.random.Generator) -> str:
  """One 28x28 gray image as a PNG or JPEG at a random square side, in colour at times."""
  side = int(rng.integers(SIDES[0], SIDES[1] + 1))
  picture = Image.fromarray(image[..., 0]).resize((side, side), Image.Resampling.BICUBIC)
  if rng.random() < COLOUR_SHARE:
    tint = rng.uniform(0.6, 1.0, 3)
    pixels = np.asarray(picture, np.float32)[..., None] * tint
    picture = Image.fromarray(np.round(pixels).astype(np.uint8), 'RGB')
  if rng.random() < 0.5:
    path = f'{path_stem}.png'
    picture.save(path)
  else:
    path = f'{path_stem}.jpg'
    picture.save(path, quality=JPEG_QUALITY)
  return path


def write_class_folders(arrays: Dict[str, Tuple[np.ndarray, np.ndarray]],
                        root: str,
                        names: Sequence[str],
                        seed: int = 0) -> int:
  """DIR/train/CLASS/NNNNN.png|jpg and DIR/test/...; returns the number of files written."""
  rng = np.random.default_rng(seed)
  count = 0
  for split, (images, labels) in arrays.items():
    for i, (image, label) in enumerate(zip(images, labels)):
      class_folder = os.path.join(root, split, names[int(label)])
      os.makedirs(class_folder, exist_ok=True)
      write_image(image, os.path.join(class_folder, f'{i:05d}'), rng)
      count += 1
  return count


def folders_part(args, size) -> Dict[str, str]:
  """Writes each dataset's folder (once) and records its scan; returns {dataset: folder}."""
  from trainer import folder  # pylint: disable=import-outside-toplevel
  written = {}
  for dataset in DATASETS:
    root = os.path.join(args.work_dir, f'{dataset}_images')
    idx_dir = args.mnist_idx if dataset == 'mnist' else args.fashion_idx
    if not os.path.exists(os.path.join(root, 'done')):
      start = time.perf_counter()
      count = size['train'] and {'train': size['train'], 'test': size['test']}
      files = write_class_folders(read_idx(idx_dir, count), root, class_names(dataset))
      print(f'{dataset}: wrote {files} files in {time.perf_counter() - start:.0f} s')
      open(os.path.join(root, 'done'), 'w').close()
    start = time.perf_counter()
    found = folder.read_folder(root, 0.2, 0.1, 'auto', skip_unreadable=False)
    seconds = time.perf_counter() - start
    files = sum(len(split.paths) for split in found.splits.values())
    record(
        'scan_' + dataset, {
            'command': command_line(),
            'data':
                f'{dataset} IDX files written as {files} PNG/JPEG files of {SIDES[0]}-{SIDES[1]} '
                f'px, {COLOUR_SHARE:.0%} in colour',
            'files': files,
            'scan_seconds': round(seconds, 2),
            'files_per_second': round(files / seconds),
            'channels': found.channels,
        }, args.quick)
    written[dataset] = root
  return written


# ---- Accuracy: folder against IDX at an equal budget


def accuracy_part(args, size, roots: Dict[str, str]) -> None:
  from benchmarks import accuracy  # pylint: disable=import-outside-toplevel
  for dataset in DATASETS:
    idx_dir = args.mnist_idx if dataset == 'mnist' else args.fashion_idx
    for side, flag in (('folder', f'--dataset=folder:{roots[dataset]}'),
                       ('idx', f'--dataset=idx:{idx_dir}')):
      if args.quick and side == 'idx':  # the quick folders hold a part of the IDX files
        continue
      name = f'accuracy_{dataset}_{side}'
      run_dir = os.path.join(args.work_dir, 'runs', name)
      trainer_args = [flag, *ACCURACY_FLAGS, f'--epochs={size["epochs"]}', *size['accuracy_flags']]
      accuracy.train(run_dir, trainer_args)
      command = ' '.join(
          shlex.quote(a)
          for a in [sys.executable, '-m', 'trainer.main', *trainer_args, f'--run_dir={run_dir}'])
      result = accuracy.run_record(run_dir, command, f'{dataset} ({side})')
      record(name, result, args.quick)


# ---- Throughput and memory, each in a process of its own


def prepared_mnist(args, roots) -> Tuple[str, str]:
  """The MNIST folder prepared at 64x64 (once); returns (tfds name, data_dir)."""
  from trainer import prepare_data  # pylint: disable=import-outside-toplevel
  from trainer.config import SourceConfig  # pylint: disable=import-outside-toplevel
  data_dir = os.path.join(args.work_dir, 'tfds')
  name, _ = prepare_data.prepare_folder(roots['mnist'], data_dir, THROUGHPUT_SIZE, 0.2,
                                        SourceConfig())
  return name, data_dir


def run_part_child(args, part: str, params: dict) -> dict:
  """`part` in a fresh process (its own TensorFlow, its own peak memory); returns its result."""
  command = [
      sys.executable, '-m', 'benchmarks.own_images', f'--child={part}',
      f'--params={json.dumps(params)}', f'--work_dir={args.work_dir}'
  ]
  proc = subprocess.run(command, cwd=records.REPO_ROOT, capture_output=True, text=True, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith('RESULT ')]
  if proc.returncode or not lines:
    sys.exit(f'error: the {part} part failed:\n{proc.stderr[-3000:]}')
  return json.loads(lines[-1][len('RESULT '):])


def throughput_child(params: dict) -> dict:
  """The same model trained on in-memory and streamed batches, in alternating chunks."""
  from benchmarks.cases import StepTimer  # pylint: disable=import-outside-toplevel
  from trainer import data, train  # pylint: disable=import-outside-toplevel
  from trainer.config import ModelConfig, TrainConfig  # pylint: disable=import-outside-toplevel
  from trainer.keras_lib import keras  # pylint: disable=import-outside-toplevel
  from trainer.model import build_model  # pylint: disable=import-outside-toplevel

  keras.utils.set_random_seed(0)
  sides = {
      'in_memory':
          data.load_splits(params['name'], params['data_dir'], 0.2, download=False),
      'streamed':
          data.load_splits(params['name'],
                           params['data_dir'],
                           0.2,
                           download=False,
                           memory_budget_mb=params['budget_mb']),
  }
  assert 'train' in sides['streamed'].streams and not sides['in_memory'].streams
  info = sides['in_memory'].info
  model = build_model(ModelConfig(image_size=THROUGHPUT_SIZE), info.image_shape, info.num_classes)
  config = TrainConfig(run_dir='unused', batch_size=THROUGHPUT_BATCH)
  stage = train.Stage('finetune', 0, 1, True, config.learning_rate)
  train.compile_for_stage(model, stage, config, params['chunk_steps'], info.num_classes)
  batches = {name: s.training_batches(THROUGHPUT_BATCH, seed=0) for name, s in sides.items()}
  timers = {name: StepTimer() for name in sides}
  for round_ in range(params['rounds']):
    for name in (sides if round_ % 2 == 0 else reversed(list(sides))):  # ABBA
      model.fit(batches[name],
                steps_per_epoch=params['chunk_steps'],
                epochs=1,
                verbose=0,
                callbacks=[timers[name]])
  skip = params['warmup_steps']
  medians = {name: images_per_second(t.calls, THROUGHPUT_BATCH, skip) for name, t in timers.items()}
  means = {
      name: mean_images_per_second(t.calls, THROUGHPUT_BATCH, skip) for name, t in timers.items()
  }
  return {
      'image_size': THROUGHPUT_SIZE,
      'batch_size': THROUGHPUT_BATCH,
      'fit_calls_per_side': params['rounds'],
      'steps_timed_per_call': params['chunk_steps'] - skip,
      'in_memory_images_per_second': round(medians['in_memory'], 1),
      'streamed_images_per_second': round(medians['streamed'], 1),
      'streamed_over_in_memory': round(medians['streamed'] / medians['in_memory'], 3),
      'in_memory_mean_images_per_second': round(means['in_memory'], 1),
      'streamed_mean_images_per_second': round(means['streamed'], 1),
      'streamed_over_in_memory_mean': round(means['streamed'] / means['in_memory'], 3),
      'precision': keras.mixed_precision.global_policy().name,
  }


def mean_images_per_second(chunks, batch_size: int, skip_steps: int) -> float:
  """Images over seconds from the end of step `skip_steps` to the last in each fit call:
  unlike the median of step rates, it counts an occasional slow step (a window read)."""
  steps = seconds = 0.0
  for marks in chunks:
    kept = [(s, t) for s, t in marks if s >= skip_steps - 1]
    steps += kept[-1][0] - kept[0][0]
    seconds += kept[-1][1] - kept[0][1]
  return steps * batch_size / seconds


def memory_child(params: dict) -> dict:
  """Host RSS while streaming the training split under a small budget, then in memory."""
  from trainer import data  # pylint: disable=import-outside-toplevel

  streamed = data.load_splits(params['name'],
                              params['data_dir'],
                              0.2,
                              download=False,
                              memory_budget_mb=params['budget_mb'])
  stream = streamed.streams['train']
  shape = streamed.info.image_shape
  split_mb = stream.size * shape[0] * shape[1] * shape[2] / 2**20
  samples = [(0, rss_bytes() / 2**20)]
  iterator = iter(streamed.training_batches(THROUGHPUT_BATCH, seed=0))
  start = time.perf_counter()
  for step in range(1, params['batches'] + 1):
    next(iterator)
    if step % params['sample_every'] == 0:
      samples.append((step, rss_bytes() / 2**20))
  seconds = time.perf_counter() - start
  peak_streaming = peak_rss_bytes() / 2**20
  # The same split read into memory, as a budget above its size would have it.
  in_memory = data.load_splits(params['name'], params['data_dir'], 0.2, download=False)
  images, _ = data.in_memory(in_memory.train)
  after_read = rss_bytes() / 2**20
  settled = [rss for step, rss in samples if step >= params['batches'] // 4]
  return {
      'split_uint8_mib': round(split_mb, 1),
      'budget_mib': params['budget_mb'],
      'batches_streamed': params['batches'],
      'examples_streamed': params['batches'] * THROUGHPUT_BATCH,
      'passes_streamed': round(params['batches'] * THROUGHPUT_BATCH / stream.size, 2),
      'streamed_images_per_second_no_model': round(params['batches'] * THROUGHPUT_BATCH / seconds),
      'rss_mib_by_batch': [[step, round(rss, 1)] for step, rss in samples],
      'rss_growth_mib_after_first_quarter': round(max(settled) - min(settled), 1),
      'peak_rss_mib_streaming': round(peak_streaming, 1),
      'rss_mib_after_reading_in_memory': round(after_read, 1),
      'in_memory_split_mib': round(images.numpy().nbytes / 2**20, 1),
  }


# ---- Plumbing


def record(name: str, result: dict, quick: bool) -> None:
  """Prints the result; records it, unless it is a smoke run's."""
  shown = {k: v for k, v in result.items() if k not in ('command', 'rss_mib_by_batch')}
  where = 'not recorded: --quick'
  if not quick:
    where = os.path.relpath(records.write(CLAIM, name, result), records.REPO_ROOT)
  print(f'{name}: {json.dumps(shown)}  ({where})')


def command_line() -> str:
  return ' '.join(
      shlex.quote(a) for a in [sys.executable, '-m', 'benchmarks.own_images', *sys.argv[1:]])


def parse_args(argv: List[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--work_dir', required=True, help='Folders, prepared data and runs go here.')
  parser.add_argument('--mnist_idx', default='/work/data/mnist_idx')
  parser.add_argument('--fashion_idx', default='/usr/share/datasets/fashion-mnist')
  parser.add_argument('--parts', default=','.join(PARTS), help=f'Some of {", ".join(PARTS)}.')
  parser.add_argument('--quick', action='store_true', help='Tiny sizes: a smoke run.')
  parser.add_argument('--child', choices=('throughput', 'memory'), help=argparse.SUPPRESS)
  parser.add_argument('--params', default='{}', help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def main(argv: List[str]) -> None:
  args = parse_args(argv)
  if args.child:
    child = throughput_child if args.child == 'throughput' else memory_child
    print('RESULT ' + json.dumps(child(json.loads(args.params))), flush=True)
    return
  if args.quick:
    args.work_dir = os.path.join(args.work_dir, 'quick')
  size = sizes(args.quick)
  parts = args.parts.split(',')
  roots = folders_part(args, size)  # the others need the folders; written once
  if 'accuracy' in parts:
    accuracy_part(args, size, roots)
  if 'throughput' in parts or 'memory' in parts:
    name, data_dir = prepared_mnist(args, roots)
    if 'throughput' in parts:
      result = run_part_child(
          args, 'throughput', {
              'name': name,
              'data_dir': data_dir,
              'chunk_steps': size['chunk_steps'],
              'warmup_steps': size['warmup_steps'],
              'rounds': size['rounds'],
              'budget_mb': size['budget_mb']
          })
      record('throughput_64', {'command': command_line(), 'data': name, **result}, args.quick)
    if 'memory' in parts:
      result = run_part_child(
          args, 'memory', {
              'name': name,
              'data_dir': data_dir,
              'batches': size['memory_batches'],
              'sample_every': size['sample_every'],
              'budget_mb': size['budget_mb']
          })
      record('memory_streaming', {'command': command_line(), 'data': name, **result}, args.quick)


if __name__ == '__main__':
  main(sys.argv[1:])
