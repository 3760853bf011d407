"""--dataset=idx:DIR: MNIST-format IDX files, gzip or not, read exactly; damaged files refused."""
import os
import shutil

import numpy as np
import pytest

from helpers import (
    FASHION_MNIST,
    SHORT_RUN,
    as_arrays,
    error_line,
    needs_fashion_mnist,
    read_idx_file,
    run_offline,
    small_digits,
    train_with_flags,
    write_idx_dir,
    write_idx_file,
)
from trainer import data, idx
from trainer.errors import UserError

# ---- The real Fashion-MNIST.


@needs_fashion_mnist
def test_real_fashion_mnist_reads_every_example_exactly():
  train, test = idx.load_idx_dir(FASHION_MNIST)
  for ds, prefix, size in [(train, 'train', 60_000), (test, 't10k', 10_000)]:
    images, labels = as_arrays(ds)
    assert images.shape == (size, 28, 28, 1) and len(labels) == size
    np.testing.assert_array_equal(np.bincount(labels), [size // 10] * 10)
    expected_images = read_idx_file(f'{FASHION_MNIST}/{prefix}-images-idx3-ubyte.gz')
    expected_labels = read_idx_file(f'{FASHION_MNIST}/{prefix}-labels-idx1-ubyte.gz')
    np.testing.assert_array_equal(images[..., 0], expected_images)
    np.testing.assert_array_equal(labels, expected_labels)


@needs_fashion_mnist
def test_real_fashion_mnist_splits_and_trains(tmp_path):
  splits = data.load_splits(f'idx:{FASHION_MNIST}', None, validation_split=0.2)
  assert [data.num_examples(ds) for ds in (splits.train, splits.validation, splits.test)
         ] == [48_000, 12_000, 10_000]
  metrics = train_with_flags(*SHORT_RUN, f'--dataset=idx:{FASHION_MNIST}',
                             f'--run_dir={tmp_path / "run"}')
  assert 0 <= metrics['test_accuracy'] <= 1 and np.isfinite(metrics['test_loss'])


@pytest.mark.parametrize('compress', [False, True])
def test_plain_and_gzipped_files_read_the_same(tmp_path, compress):
  images, labels = small_digits()
  directory = write_idx_dir(tmp_path / 'idx', images, labels, compress=compress)
  train, _ = idx.load_idx_dir(directory)
  read_images, read_labels = as_arrays(train)
  np.testing.assert_array_equal(read_images[..., 0], images)
  np.testing.assert_array_equal(read_labels, labels)


# ---- Bad input: one clear error each.


def _wrong_magic(directory):
  images, _ = small_digits()
  write_idx_file(os.path.join(directory, 'train-images-idx3-ubyte'), images, idx.LABELS_MAGIC)


def _truncated(directory):
  path = os.path.join(directory, 'train-images-idx3-ubyte')
  os.truncate(path, os.path.getsize(path) - 100)


def _gzipped_images(directory):
  """Replaces the train images by their gzipped copy; returns its path."""
  images, _ = small_digits()
  os.remove(os.path.join(directory, 'train-images-idx3-ubyte'))
  return write_idx_file(os.path.join(directory, 'train-images-idx3-ubyte'),
                        images,
                        idx.IMAGES_MAGIC,
                        compress=True)


def _truncated_gzip(directory):
  path = _gzipped_images(directory)
  os.truncate(path, os.path.getsize(path) // 2)


def _header_only_gzip(directory):
  os.truncate(_gzipped_images(directory), 10)  # cut inside gzip's own header


def _fewer_labels(directory):
  _, labels = small_digits()
  write_idx_file(os.path.join(directory, 'train-labels-idx1-ubyte'), labels[:-1], idx.LABELS_MAGIC)


def _file_missing(directory):
  os.remove(os.path.join(directory, 't10k-labels-idx1-ubyte'))


def _label_out_of_range(directory):
  _, labels = small_digits()
  labels[3] = 12
  write_idx_file(os.path.join(directory, 'train-labels-idx1-ubyte'), labels, idx.LABELS_MAGIC)


def _no_folder(directory):
  shutil.rmtree(directory)


BAD_IDX_FOLDERS = [
    (_wrong_magic, r'train-images-idx3-ubyte is not an IDX file of the expected kind '
     r'\(magic number 2049, expected 2051\)'),
    (_truncated, r'holds 9324 bytes but its header promises 9424'),
    (_truncated_gzip, r'train-images-idx3-ubyte.gz is not a complete gzip file'),
    (_header_only_gzip, r'train-images-idx3-ubyte.gz is not a complete gzip file'),
    (_fewer_labels, r'holds 12 images but .*train-labels-idx1-ubyte holds 11 labels'),
    (_file_missing, r'has no t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz'),
    (_label_out_of_range, r'holds label 12, but IDX datasets have the 10 classes 0-9'),
    (_no_folder, r'no such folder'),
]


@pytest.mark.parametrize('damage, expected',
                         BAD_IDX_FOLDERS,
                         ids=[damage.__name__.strip('_') for damage, _ in BAD_IDX_FOLDERS])
def test_bad_idx_folders_are_refused_with_the_problem_and_fix(tmp_path, damage, expected):
  directory = write_idx_dir(tmp_path / 'idx', *small_digits())
  damage(directory)
  with pytest.raises(UserError, match=expected):
    data.load_splits(f'idx:{directory}', None, 0.2)


def test_a_bad_idx_folder_ends_training_in_one_line(tmp_path):
  directory = write_idx_dir(tmp_path / 'idx', *small_digits())
  _wrong_magic(directory)
  result, _ = run_offline('trainer.main', f'--dataset=idx:{directory}', '--weights=none',
                          f'--run_dir={tmp_path / "run"}')
  assert 'magic number 2049, expected 2051' in error_line(result)
