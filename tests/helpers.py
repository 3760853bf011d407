"""Helpers the test modules share: tiny run flags, IDX files, no-network runs, event files.

Fixtures live in conftest.py; plain functions and constants live here, so test modules
import this module and never each other.
"""
import gzip
import io
import os
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from PIL import Image, ImageDraw
from tensorboard.plugins.hparams import plugin_data_pb2

from trainer import idx, main

MOCK_EXAMPLES = 40
# Flags of a run small enough for this CPU: 32x32 (DenseNet's minimum), a few steps.
TINY_FLAGS = [
    '--image_size=32', '--batch_size=8', '--epochs=2', '--steps_per_epoch=2', '--eval_steps=1',
    '--warmup_epochs=0.5', '--recalibrate_batchnorm=2'
]


def train_with_flags(*argv):
  """Parses `argv` as trainer.main's flags and runs it in this process; returns the test metrics."""
  flags.FLAGS(['trainer.main', *argv])
  return main.run()


def event_tags(log_dir):
  """Every summary tag written to the TensorBoard event files directly in `log_dir`."""
  tags = set()
  for path in tf.io.gfile.glob(os.path.join(log_dir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(value.tag for value in event.summary.value)
  return tags


def event_values(log_dir, tag):
  """[(step, value, wall time)] of scalar `tag` in the event files directly in `log_dir`."""
  found = []
  for path in tf.io.gfile.glob(os.path.join(log_dir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          found.append((event.step, float(tf.make_ndarray(value.tensor)), event.wall_time))
  return sorted(found)


def hparams_session(log_dir):
  """(wall time, group name, {hparam: value}) of the HParams session start in `log_dir`."""
  for path in tf.io.gfile.glob(os.path.join(log_dir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == 'hparams':
          data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
          if data.HasField('session_start_info'):
            start = data.session_start_info
            hparams = {name: getattr(v, v.WhichOneof('kind')) for name, v in start.hparams.items()}
            return event.wall_time, start.group_name, hparams
  return None


# ---- IDX files

# Debian's dataset-fashion-mnist (.ci/run installs it): the four files, gzipped.
FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
needs_fashion_mnist = pytest.mark.skipif(not os.path.isdir(FASHION_MNIST),
                                         reason='apt-get install dataset-fashion-mnist')


def read_idx_file(path):
  """The whole file as a numpy array, decoded here independently of trainer/idx.py."""
  with gzip.open(path) if path.endswith('.gz') else open(path, 'rb') as f:
    raw = f.read()
  num_dims = raw[3]
  dims = struct.unpack(f'>{num_dims}I', raw[4:4 + 4 * num_dims])
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * num_dims).reshape(dims)


def as_arrays(ds):
  """All images and labels of a dataset, read in large batches."""
  batches = list(ds.batch(10_000).as_numpy_iterator())
  return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def write_idx_dir(directory, images, labels, test_images=None, test_labels=None, compress=False):
  """Writes the four MNIST files for uint8 `images` (N, 28, 28) and `labels` (N,)."""
  os.makedirs(directory, exist_ok=True)
  splits = {
      'train': (images, labels),
      't10k': (images if test_images is None else test_images,
               labels if test_labels is None else test_labels)
  }
  for prefix, (split_images, split_labels) in splits.items():
    write_idx_file(os.path.join(directory, f'{prefix}-images-idx3-ubyte'), split_images,
                   idx.IMAGES_MAGIC, compress)
    write_idx_file(os.path.join(directory, f'{prefix}-labels-idx1-ubyte'), split_labels,
                   idx.LABELS_MAGIC, compress)
  return str(directory)


def write_idx_file(path, array, magic, compress=False):
  content = struct.pack(f'>{1 + array.ndim}I', magic, *array.shape) + array.astype(
      np.uint8).tobytes()
  if compress:
    path += '.gz'
  with gzip.open(path, 'wb') if compress else open(path, 'wb') as f:
    f.write(content)
  return path


def small_digits(n=12, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8))


# ---- No network, in this process and in a command.

REPO = os.path.join(os.path.dirname(__file__), '..')
# A short run: one epoch of two steps, only the head (and the conv stem) training.
SHORT_RUN = [*TINY_FLAGS, '--epochs=1', '--train_mode=transfer', '--weights=none', '--noexport']


def block_network(monkeypatch):
  """Makes every Python socket fail as on a machine without a network; returns the attempts."""
  attempts = []

  def refuse(*args, **kwargs):
    attempts.append(args[:2])
    raise socket.gaierror(socket.EAI_NONAME, 'network disabled by the test')

  monkeypatch.setattr(socket, 'getaddrinfo', refuse)
  monkeypatch.setattr(socket.socket, 'connect', refuse)
  return attempts


# Runs a module as `python -m` would, after disabling the network the same way.
_OFFLINE_MAIN = '''
import runpy, socket, sys
def refuse(*args, **kwargs):
  raise socket.gaierror(socket.EAI_NONAME, 'network disabled by the test')
socket.getaddrinfo = refuse
socket.socket.connect = refuse
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name='__main__', alter_sys=True)
'''


def run_python(*args, timeout=300):
  """`python ARGS...` from the repository root; returns the finished process."""
  return subprocess.run([sys.executable, *args],
                        cwd=REPO,
                        capture_output=True,
                        text=True,
                        timeout=timeout,
                        check=False)


def run_script(script, *args, env=None, timeout=60):
  """Runs the repository's shell script `script` (a path from the root) with this Python as
  its $PYTHON; returns the finished process."""
  return subprocess.run([os.path.join(REPO, script), *args],
                        capture_output=True,
                        text=True,
                        cwd=REPO,
                        timeout=timeout,
                        check=False,
                        env={
                            **os.environ, 'PYTHON': sys.executable,
                            **(env or {})
                        })


def run_offline(module, *argv, env=None):
  """Runs `python -m module argv...` with no network; returns (the process's result, seconds)."""
  start = time.perf_counter()
  result = subprocess.run([sys.executable, '-c', _OFFLINE_MAIN, module, *argv],
                          cwd=REPO,
                          capture_output=True,
                          text=True,
                          timeout=300,
                          check=False,
                          env={
                              **os.environ,
                              **(env or {})
                          })
  return result, time.perf_counter() - start


def error_line(result):
  """The one line a bad input ends in; fails the test if it is not `error: ...` alone."""
  assert result.returncode != 0, result.stdout[-2000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: '), result.stderr[-2000:]
  return last


# ---- Image files


def draw_seven(size=(90, 120), ink=30, paper=230):
  """A 7 in dark ink on light paper, taller than wide, as a phone might photograph it."""
  width, height = size
  image = Image.new('L', size, paper)
  ImageDraw.Draw(image).line([(0.25 * width, 0.2 * height), (0.75 * width, 0.2 * height),
                              (0.4 * width, 0.8 * height)],
                             fill=ink,
                             width=width // 8)
  return image


def encode(image, file_format='PNG', **options):
  """`image` (a Pillow image) as the bytes of a file."""
  out = io.BytesIO()
  image.save(out, file_format, **options)
  return out.getvalue()


# ---- Folders of images (--dataset=folder:DIR)

# (extension, Pillow mode) in turn: every format and mode the trainer reads; mostly colour.
IMAGE_KINDS = [('png', 'L'), ('jpg', 'RGB'), ('png', 'RGBA'), ('bmp', 'RGB'), ('gif', 'P'),
               ('webp', 'RGB'), ('png', 'I;16'), ('png', 'P'), ('jpeg', 'RGB'), ('PNG', 'LA')]


def write_image_folder(root,
                       class_names=('cat', 'dog', 'eel'),
                       per_class=10,
                       seed=0,
                       kinds=IMAGE_KINDS):
  """Class folders of generated images of 20-120 pixels a side, their format and mode taken
  in turn from `kinds`; each class has its own brightness. Returns the paths, sorted."""
  rng = np.random.default_rng(seed)
  paths = []
  for label, name in enumerate(class_names):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      extension, mode = kinds[(i + label) % len(kinds)]
      height, width = rng.integers(20, 121, 2)
      level = 40 + 80 * label % 200
      pixels = np.clip(rng.normal(level, 30, (height, width, 3)), 0, 255).astype(np.uint8)
      image = Image.fromarray(pixels)
      if mode == 'I;16':
        image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
      else:
        image = image.convert(mode)
      path = os.path.join(root, name, f'{i:03d}.{extension}')
      image.save(path)
      paths.append(path)
  return sorted(paths)


def write_file(path, contents):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(contents)
  return str(path)
