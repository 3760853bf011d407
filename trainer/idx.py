"""MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST), gzip or not, streamed with tf.data.

The headers are checked here in Python, so a wrong or truncated file fails with
one clear line before TensorFlow reads a byte of it; the records themselves are
read by tf.data's FixedLengthRecordDataset, so nothing is loaded into host memory.
"""
import gzip
import math
import os
import struct
from typing import Tuple

import tensorflow as tf

from trainer.errors import UserError

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
IMAGES_MAGIC = 2051  # unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # unsigned byte, 1 dimension
SPLIT_PREFIXES = {'train': 'train', 'test': 't10k'}
DECODE_CHUNK = 1024  # records decoded per op


def load_idx_dir(directory: str) -> Tuple[tf.data.Dataset, tf.data.Dataset]:
  """Returns the (train, test) datasets of uint8 (28, 28, 1) images and int64 labels in `directory`."""
  if not os.path.isdir(directory):
    raise UserError(f'--dataset=idx:{directory}: no such folder; give the folder that holds '
                    'train-images-idx3-ubyte[.gz] and the three other MNIST files')
  return tuple(load_idx_split(directory, prefix) for prefix in SPLIT_PREFIXES.values())


def load_idx_split(directory: str, prefix: str) -> tf.data.Dataset:
  images_path = _find(directory, f'{prefix}-images-idx3-ubyte')
  labels_path = _find(directory, f'{prefix}-labels-idx1-ubyte')
  num_images, rows, cols = read_header(images_path, IMAGES_MAGIC, 3)
  (num_labels,) = read_header(labels_path, LABELS_MAGIC, 1)
  if num_images != num_labels:
    raise UserError(f'{images_path} holds {num_images} images but {labels_path} holds '
                    f'{num_labels} labels; use the matching pair of files')
  if (rows, cols) != IMAGE_SHAPE[:2]:
    raise UserError(f'{images_path} holds {rows}x{cols} images; IDX datasets must be 28x28')
  _check_labels(labels_path)
  # Decoded DECODE_CHUNK records at a time: one op per chunk rather than per image makes
  # the first pass (the cache and shuffle-buffer fill) about 4x faster on a 2-core CPU.
  images = _records(images_path, header_bytes=16, record_bytes=rows * cols).batch(DECODE_CHUNK)
  labels = _records(labels_path, header_bytes=8, record_bytes=1).batch(DECODE_CHUNK)
  images = images.map(lambda r: tf.reshape(tf.io.decode_raw(r, tf.uint8), (-1, *IMAGE_SHAPE)))
  labels = labels.map(lambda r: tf.cast(tf.io.decode_raw(r, tf.uint8)[:, 0], tf.int64))
  return tf.data.Dataset.zip(
      (images, labels)).unbatch().apply(tf.data.experimental.assert_cardinality(num_images))


def _check_labels(path):
  """Refuses labels outside 0-9 (e.g. EMNIST Letters' 1-26), which would otherwise train silently
  against the wrong classes. Label files are small (60 KB for 60,000 labels)."""
  with _open(path) as f:
    f.seek(8)  # past the header
    largest = max(f.read(), default=0)
  if largest >= NUM_CLASSES:
    raise UserError(f'{path} holds label {largest}, but IDX datasets have the {NUM_CLASSES} '
                    f'classes 0-{NUM_CLASSES - 1}; use MNIST-format files, or a tfds --dataset')


def _find(directory, stem):
  for name in (stem, stem + '.gz'):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return path
  raise UserError(f'{directory} has no {stem} or {stem}.gz; an IDX folder needs the four MNIST '
                  'files (train-images, train-labels, t10k-images, t10k-labels)')


def read_header(path: str, magic: int, num_dims: int) -> Tuple[int, ...]:
  """Checks the magic number and the file's length; returns the dimension sizes."""
  header_bytes = 4 * (1 + num_dims)
  try:
    with _open(path) as f:
      header = f.read(header_bytes)
  except (OSError, EOFError):  # gzip's errors for a damaged or very short .gz file
    raise _damaged_gzip(path) from None
  if len(header) < header_bytes:
    raise UserError(f'{path} is truncated (shorter than its header); download it again')
  found_magic, *dims = struct.unpack(f'>{1 + num_dims}I', header)
  if found_magic != magic:
    raise UserError(f'{path} is not an IDX file of the expected kind (magic number {found_magic}, '
                    f'expected {magic}); check that the file is the one its name says')
  expected = header_bytes + math.prod(dims)
  actual = _uncompressed_size(path)
  if actual != expected:
    raise UserError(f'{path} holds {actual} bytes but its header promises {expected}; the file is '
                    'truncated or corrupt, download it again')
  return tuple(dims)


def _open(path):
  try:
    return gzip.open(path, 'rb') if _is_gzip(path) else open(path, 'rb')
  except OSError as e:
    raise UserError(f'cannot read {path}: {e.strerror or e}') from None


def _is_gzip(path):
  with open(path, 'rb') as f:
    return f.read(2) == b'\x1f\x8b'


def _uncompressed_size(path):
  if not _is_gzip(path):
    return os.path.getsize(path)
  try:
    with gzip.open(path, 'rb') as f:
      return f.seek(0, os.SEEK_END)
  except (OSError, EOFError):
    raise _damaged_gzip(path) from None


def _damaged_gzip(path):
  return UserError(f'{path} is not a complete gzip file; download it again')


def _records(path, header_bytes, record_bytes):
  return tf.data.FixedLengthRecordDataset(path,
                                          record_bytes,
                                          header_bytes=header_bytes,
                                          compression_type='GZIP' if _is_gzip(path) else '')
