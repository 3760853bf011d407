"""python -m trainer.prepare_data: a tfds dataset built from local IDX files reads like a download."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags

from helpers import (
    FASHION_MNIST,
    SHORT_RUN,
    as_arrays,
    block_network,
    error_line,
    needs_fashion_mnist,
    read_idx_file,
    run_offline,
    small_digits,
    train_with_flags,
    write_file,
    write_idx_dir,
    write_image_folder,
)
from trainer import data, prepare_data
from trainer.config import SourceConfig
from trainer.errors import UserError


@pytest.fixture(scope='module')
def fashion_data_dir(tmp_path_factory):
  """The real Fashion-MNIST IDX files prepared as tfds's fashion_mnist (~10 s)."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  prepare_data.prepare('fashion_mnist', data_dir, from_idx=FASHION_MNIST)
  return data_dir


def per_class_sums(images, labels):
  """Each class's count and pixel sum: equal for two sources holding the same examples in any order."""
  flat = images.reshape(len(images), -1).sum(axis=1, dtype=np.int64)
  return np.bincount(labels, minlength=10), np.bincount(labels, weights=flat, minlength=10)


@needs_fashion_mnist
def test_tfds_finds_the_dataset_prepared_with_its_own_name_and_version(fashion_data_dir):
  builder = tfds.builder('fashion_mnist', data_dir=fashion_data_dir)
  assert builder.is_prepared()
  assert builder.data_dir.endswith('fashion_mnist/3.0.1')
  assert {
      name: split.num_examples for name, split in builder.info.splits.items()
  } == {
      'train': 60_000,
      'test': 10_000
  }
  assert builder.info.features['label'].names[0] == 'T-shirt/top'


@needs_fashion_mnist
def test_training_reads_every_example_with_no_network(fashion_data_dir, monkeypatch):
  attempts = block_network(monkeypatch)
  splits = data.load_splits('fashion_mnist', fashion_data_dir, 0.2, download=False)
  train_images, train_labels = (
      np.concatenate(parts) for parts in zip(as_arrays(splits.train), as_arrays(splits.validation)))
  test_images, test_labels = as_arrays(splits.test)
  assert (len(train_labels), len(test_labels)) == (60_000, 10_000)
  np.testing.assert_array_equal(np.bincount(train_labels), [6_000] * 10)
  for images, labels, prefix in [(train_images, train_labels, 'train'),
                                 (test_images, test_labels, 't10k')]:
    expected = (read_idx_file(f'{FASHION_MNIST}/{prefix}-images-idx3-ubyte.gz'),
                read_idx_file(f'{FASHION_MNIST}/{prefix}-labels-idx1-ubyte.gz'))
    for got, want in zip(per_class_sums(images, labels), per_class_sums(*expected)):
      np.testing.assert_array_equal(got, want)
  assert not attempts, f'tried the network: {attempts}'


@needs_fashion_mnist
def test_training_on_the_prepared_dataset_with_no_network(fashion_data_dir, tmp_path, monkeypatch):
  attempts = block_network(monkeypatch)
  # --download stays on: a prepared dataset must never be fetched or looked up again.
  metrics = train_with_flags(*SHORT_RUN, '--dataset=fashion_mnist',
                             f'--data_dir={fashion_data_dir}', f'--run_dir={tmp_path / "run"}')
  assert 0 <= metrics['test_accuracy'] <= 1 and np.isfinite(metrics['test_loss'])
  assert not attempts, f'tried the network: {attempts}'


def test_the_command_builds_mnist_from_idx_files_offline(tmp_path):
  images, labels = small_digits(12)
  idx_dir = write_idx_dir(tmp_path / 'idx', images, labels, *small_digits(6, seed=1), compress=True)
  data_dir = tmp_path / 'tfds'
  result, _ = run_offline('trainer.prepare_data', '--dataset=mnist', f'--from_idx={idx_dir}',
                          f'--data_dir={data_dir}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Prepared mnist in {data_dir}/mnist/3.0.1' in result.stdout
  assert f'python -m trainer.main --dataset=mnist --data_dir={data_dir} --nodownload' in \
      result.stdout
  assert tfds.builder('mnist', data_dir=str(data_dir)).is_prepared()
  splits = data.load_splits('mnist', str(data_dir), validation_split=0.25, download=False)
  train_images, train_labels = (
      np.concatenate(parts) for parts in zip(as_arrays(splits.train), as_arrays(splits.validation)))
  assert len(train_labels) == 12 and data.num_examples(splits.test) == 6
  for got, want in zip(per_class_sums(train_images, train_labels), per_class_sums(images, labels)):
    np.testing.assert_array_equal(got, want)


def test_a_prepared_dataset_is_kept_as_it_is(tmp_path):
  idx_dir = write_idx_dir(tmp_path / 'idx', *small_digits())
  folder = prepare_data.prepare('mnist', str(tmp_path / 'tfds'), from_idx=idx_dir)
  info = os.path.join(folder, 'dataset_info.json')
  written = os.path.getmtime(info)
  assert prepare_data.prepare('mnist', str(tmp_path / 'tfds'), from_idx=idx_dir) == folder
  assert os.path.getmtime(info) == written


@pytest.mark.parametrize('dataset, expected', [
    ('cifar10', r"--from_idx builds datasets of 10 classes of 28x28 gray images .* but 'cifar10' "
     r'has 10 classes of \(32, 32, 3\) images; drop --from_idx'),
    ('emnist', r"'emnist' has 62 classes"),
    ('no_such_dataset', r"--dataset='no_such_dataset' is not a tensorflow-datasets name"),
])
def test_from_idx_refuses_datasets_that_are_not_mnist_shaped(tmp_path, dataset, expected):
  idx_dir = write_idx_dir(tmp_path / 'idx', *small_digits())
  with pytest.raises(UserError, match=expected):
    prepare_data.prepare(dataset, str(tmp_path / 'tfds'), from_idx=idx_dir)


def test_a_download_with_no_network_ends_in_one_line(tmp_path):
  result, seconds = run_offline('trainer.prepare_data', '--dataset=mnist', f'--data_dir={tmp_path}')
  line = error_line(result)
  assert "could not download 'mnist'" in line and '--from_idx=IDX_DIR' in line
  assert seconds < 60, seconds


def test_help_shows_the_flags_it_reads():
  key_flags = {flag.name for flag in flags.FLAGS.get_key_flags_for_module(prepare_data)}
  assert {'dataset', 'data_dir', 'from_idx'} <= key_flags


def test_nodownload_is_honoured(tmp_path):
  result, _ = run_offline('trainer.prepare_data', '--dataset=mnist', '--nodownload',
                          f'--data_dir={tmp_path}')
  line = error_line(result)
  assert 'is not prepared' in line and 'could not download' not in line, line


# ---- A folder of images, prepared once as a tfds dataset.


def image_sums(ds):
  return sorted(int(image.sum()) for image, _ in ds.as_numpy_iterator())


def test_a_folder_is_prepared_as_a_fixed_size_tfds_dataset_with_its_splits_and_classes(tmp_path):
  write_image_folder(tmp_path / 'My Pets', ('cat', 'dog'), per_class=10)
  data_dir = str(tmp_path / 'tfds')
  name, path = prepare_data.prepare_folder(str(tmp_path / 'My Pets'), data_dir, 32, 0.2,
                                           SourceConfig())
  assert name == 'my_pets' and path == os.path.join(data_dir, 'my_pets', '1.0.0')
  prepared = data.load_splits(name, data_dir, 0.2, download=False)
  direct = data.load_splits(f'folder:{tmp_path / "My Pets"}', None, 0.2, image_size=32)
  assert prepared.info == direct.info
  assert prepared.info.image_shape == (32, 32, 3) and prepared.info.class_names == ('cat', 'dog')
  for split in data.SPLITS:  # the same images in each split, stored losslessly
    assert image_sums(getattr(prepared, split)) == image_sums(getattr(direct, split))
  # Kept as it is when prepared again; refused at another shape.
  written = os.path.getmtime(os.path.join(path, 'dataset_info.json'))
  assert prepare_data.prepare_folder(str(tmp_path / 'My Pets'), data_dir, 32, 0.2,
                                     SourceConfig()) == (name, path)
  assert os.path.getmtime(os.path.join(path, 'dataset_info.json')) == written
  with pytest.raises(UserError, match='prepared otherwise .* delete it'):
    prepare_data.prepare_folder(str(tmp_path / 'My Pets'), data_dir, 48, 0.2, SourceConfig())


def test_a_folder_named_as_a_tfds_dataset_gets_a_name_of_its_own():
  assert prepare_data.folder_dataset_name('/data/mnist/') == 'mnist_folder'
  assert prepare_data.folder_dataset_name('/data/2024 Photos!') == 'folder_2024_photos'


@pytest.mark.slow
def test_the_command_prepares_a_folder_and_prints_how_to_train_on_it(tmp_path):
  write_image_folder(tmp_path / 'flowers', ('rose', 'tulip'), per_class=6)
  write_file(tmp_path / 'flowers' / 'rose' / 'broken.jpg', b'')
  data_dir = tmp_path / 'tfds'
  result, _ = run_offline('trainer.prepare_data', f'--dataset=folder:{tmp_path / "flowers"}',
                          '--image_size=40', '--channels=1', '--skip_unreadable',
                          f'--data_dir={data_dir}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Prepared folder:{tmp_path / "flowers"} as flowers in {data_dir}/flowers/1.0.0' in \
      result.stdout
  assert (f'python -m trainer.main --dataset=flowers --data_dir={data_dir} --image_size=40 '
          '--nodownload') in result.stdout
  assert '1 of the 13 image files' in result.stderr
  prepared = data.load_splits('flowers', str(data_dir), 0.2, download=False)
  assert prepared.info.image_shape == (40, 40, 1)
