"""--dataset beyond MNIST: other tfds datasets through both adapters, and behaviour with no network.

Model builds are the cost here (~10 s each on a 2-core CPU), so there is one short
training run per adapter (CIFAR-10 with rgb, EMNIST with conv) and a forward pass
for the two other pairs. Synthetic data trains in tests/test_train_modes.py.
"""

import socket
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import downloader

from helpers import (
    MOCK_EXAMPLES,
    SHORT_RUN,
    block_network,
    error_line,
    run_offline,
    train_with_flags,
)
from trainer import data
from trainer.config import ModelConfig, SourceConfig
from trainer.errors import UserError
from trainer.model import build_model

# ---- No network, in this process and in a command.


def test_no_data_and_no_network_ends_in_seconds_naming_both_fixes(tmp_path):
  result, seconds = run_offline('trainer.main', '--dataset=mnist', '--weights=none',
                                f'--data_dir={tmp_path}', f'--run_dir={tmp_path / "run"}')
  line = error_line(result)
  assert "could not download 'mnist'" in line
  assert 'python -m trainer.prepare_data --dataset=mnist --data_dir=DIR' in line
  assert '--from_idx=IDX_DIR' in line
  # tfds alone retries for 204 s; the rest of this budget is starting Python and TensorFlow.
  assert seconds < 60, seconds


def test_a_failed_download_fails_fast_in_every_thread_and_leaves_the_process_as_it_was(tmp_path):
  """tfds downloads each file in a thread of its own; after the first failure ends the
  download, threads that only start then must not retry for minutes behind the error line
  (seen on a loaded machine: 10 retries, 200 s, the error line no longer the last). And the
  process must not stay patched: later downloads keep tfds's retries and no socket timeout."""
  retries, timeout = downloader.MAX_RETRIES, socket.getdefaulttimeout()
  builder = tfds.builder('mnist', data_dir=str(tmp_path))
  seen = []

  def download():
    time.sleep(0.2)  # still running as the failure is handled
    seen.append((downloader.MAX_RETRIES, socket.getdefaulttimeout()))

  # A failure with tfds's download pool busy and more downloads queued behind it.
  def fail(**kwargs):
    pool = downloader.get_downloader(max_simultaneous_downloads=None)._executor
    for _ in range(pool._max_workers + 5):
      pool.submit(download)
    raise tfds.download.DownloadError('network disabled by the test')

  builder.download_and_prepare = fail
  with pytest.raises(UserError, match="could not download 'mnist'"):
    data.download_and_prepare(builder)
  assert seen and set(seen) == {(0, 60)}  # every download that ran failed fast
  assert (downloader.MAX_RETRIES, socket.getdefaulttimeout()) == (retries, timeout)
  time.sleep(0.5)
  assert set(seen) == {(0, 60)}  # and none ran late, with the retries back


def test_a_dataset_that_is_not_image_classification_is_refused_before_any_download(
    tmp_path, monkeypatch):
  attempts = block_network(monkeypatch)
  with pytest.raises(UserError, match="'imdb_reviews' has no image and label features"):
    data.load_splits('imdb_reviews', str(tmp_path), 0.2)
  assert not attempts


# ---- Other tfds datasets: shapes and classes come from the dataset's info.


@pytest.fixture
def mock_tfds(tmp_path):
  """tfds's mock data of each dataset's real shape, downloads blocked; yields its data_dir."""
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    yield str(tmp_path / 'tfds')


@pytest.mark.parametrize(
    'dataset, image_shape, num_classes',
    [
        ('cifar10', (32, 32, 3), 10),
        ('emnist',
         (28, 28, 1), 62),  # the default config, byclass: digits and both cases of letters
    ])
def test_shape_and_classes_come_from_the_dataset_info(mock_tfds, dataset, image_shape, num_classes):
  splits = data.load_splits(dataset, mock_tfds, 0.2)
  assert (splits.info.image_shape, splits.info.num_classes) == (image_shape, num_classes)
  images, labels = next(iter(splits.train.batch(4)))
  assert images.dtype == np.uint8 and tuple(images.shape[1:]) == image_shape
  assert labels.numpy().max() < num_classes


@pytest.mark.parametrize('dataset, adapter', [('cifar10', 'rgb'), ('emnist', 'conv')])
def test_a_dataset_trains_a_step_through_an_adapter(mock_tfds, tmp_path, dataset, adapter):
  metrics = train_with_flags(*SHORT_RUN, f'--dataset={dataset}', f'--adapter={adapter}',
                             f'--data_dir={mock_tfds}', f'--run_dir={tmp_path / "run"}')
  assert 0 <= metrics['test_accuracy'] <= 1 and np.isfinite(metrics['test_loss'])


@pytest.mark.parametrize('dataset, adapter', [('cifar10', 'conv'), ('emnist', 'rgb')])
def test_the_other_pairs_run_forward(mock_tfds, dataset, adapter):
  splits = data.load_splits(dataset, mock_tfds, 0.2)
  model = build_model(ModelConfig(image_size=32, adapter=adapter), splits.info.image_shape,
                      splits.info.num_classes)
  images, _ = next(iter(splits.train.batch(2)))
  assert model(images, training=False).shape == (2, splits.info.num_classes)


# ---- tfds datasets whose images vary in size, and the splits a dataset lacks.


def test_a_varying_size_dataset_is_stored_at_the_image_size_in_one_shape(mock_tfds):
  splits = data.load_splits('tf_flowers', mock_tfds, 0.2, image_size=40)
  assert splits.info.image_shape == (40, 40, 3) and splits.info.num_classes == 5
  assert splits.info.class_names[0] == 'dandelion'
  images, labels = next(iter(splits.training_batches(8)))
  assert images.shape == (8, 40, 40, 3) and images.dtype == np.uint8 and labels.shape == (8,)
  for split in data.SPLITS:
    image, _ = next(iter(getattr(splits, split)))
    assert image.shape == (40, 40, 3)
  gray = data.load_splits('tf_flowers',
                          mock_tfds,
                          0.2,
                          image_size=32,
                          source=SourceConfig(channels='1', aspect='pad'))
  assert gray.info.image_shape == (32, 32, 1)
  assert next(iter(gray.evaluation_batches('test', 4)))[0].shape == (4, 32, 32, 1)


class _Builder:
  """What tfds_split_names reads of a builder: the names of its splits."""

  def __init__(self, *splits):
    self.info = type('Info', (), {'splits': {name: None for name in splits}})


@pytest.mark.parametrize('splits, expected', [
    (('train', 'test'), ('train[:80%]', 'train[80%:]', 'test')),
    (('train',), ('train[:72%]', 'train[72%:90%]', 'train[90%:]')),
    (('train', 'validation'), ('train[:90%]', 'validation', 'train[90%:]')),
    (('train', 'validation', 'test'), ('train[:100%]', 'validation', 'test')),
])
def test_a_dataset_s_own_splits_are_used_and_the_missing_ones_carved_from_train(splits, expected):
  names = data.tfds_split_names(_Builder(*splits), validation_split=0.2, test_fraction=0.1)
  assert (names['train'], names['validation'], names['test']) == expected


def test_a_version_tfds_does_not_have_ends_in_one_line_naming_those_it_has(tmp_path):
  with pytest.raises(UserError, match=r"'mnist:99.0.0'.*has 3.0.1.*--dataset=mnist:3.0.1"):
    data.load_splits('mnist:99.0.0', str(tmp_path), 0.2, download=False)
