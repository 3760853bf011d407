"""The input pipeline: uint8 at the stored size, deterministic splits and order."""
import numpy as np
import pytest
import tensorflow as tf

from trainer import data
from trainer.config import DatasetInfo
from trainer.errors import UserError


def first_batch(ds):
  images, labels = next(iter(ds))
  return images.numpy(), labels.numpy()


def test_training_batches_are_uint8_at_the_stored_size():
  ds = data.training_batches(data.synthetic_dataset(50, seed=0), 16, seed=0)
  images, labels = first_batch(ds)
  assert images.dtype == np.uint8 and images.shape == (16, 28, 28, 1)
  assert labels.dtype == np.int64 and labels.shape == (16,)
  # Nothing float or resized is ever made on the host: the whole pipeline is uint8 28x28.
  assert ds.element_spec[0] == tf.TensorSpec((16, 28, 28, 1), tf.uint8)


def labels_of(ds, batches):
  return np.concatenate([labels for _, labels in ds.take(batches).as_numpy_iterator()])


def test_training_repeats_with_full_batches_and_evaluation_keeps_the_remainder():
  source = data.synthetic_dataset(20, seed=0)
  training = data.training_batches(source, 8)
  assert [len(labels) for _, labels in training.take(5)] == [8] * 5  # past one pass of 20
  evaluation = data.evaluation_batches(source, 8)
  assert [len(labels) for _, labels in evaluation] == [8, 8, 4]
  assert [len(labels) for _, labels in data.evaluation_batches(source, 8, max_batches=2)] == [8, 8]


def test_every_pass_is_a_new_permutation_that_depends_only_on_the_seed():
  source = data.synthetic_dataset(64, seed=0)
  indices = tf.data.Dataset.range(64).map(lambda i: (tf.zeros([1, 1, 1], tf.uint8), i))
  passes = labels_of(data.training_batches(indices, 16, seed=1), 12).reshape(3, 64)
  for one_pass in passes:
    assert sorted(one_pass) == list(range(64))  # each example once per pass
  assert not np.array_equal(passes[0], passes[1]) and not np.array_equal(passes[1], passes[2])
  np.testing.assert_array_equal(labels_of(data.training_batches(source, 32, seed=1), 3),
                                labels_of(data.training_batches(source, 32, seed=1), 3))
  assert not np.array_equal(labels_of(data.training_batches(source, 32, seed=1), 3),
                            labels_of(data.training_batches(source, 32, seed=2), 3))


def test_a_stream_started_at_step_k_is_the_rest_of_the_stream_from_zero():
  """What a resumed run trains on: the batches an uninterrupted run would have seen."""
  source = data.synthetic_dataset(40, seed=0)
  whole = labels_of(data.training_batches(source, 8, seed=3), 12)
  resumed = labels_of(data.training_batches(source, 8, seed=3, first_step=7), 5)
  np.testing.assert_array_equal(resumed, whole[7 * 8:])


def test_a_pass_stopped_early_leaves_every_later_pass_whole(prepared_mnist):
  """The bug behind validation that stopped after epoch 1: a `.cache()`d tfds dataset read
  with take(1) kept, in about half the tries, only what prefetching had read."""
  splits = data.load_splits('mnist', prepared_mnist, 0.2, download=False)
  for _ in range(5):
    ds = data.evaluation_batches(splits.validation, 16)
    next(iter(ds.take(1)))
    assert [sum(1 for _ in ds) for _ in range(2)] == [13, 13]  # 200 digits in batches of 16


def test_validation_is_the_last_part_of_train_and_sizes_add_up():
  splits = data.load_splits('synthetic', None, validation_split=0.2)
  assert data.num_examples(splits.train) == 48_000
  assert data.num_examples(splits.validation) == 12_000
  assert data.num_examples(splits.test) == 10_000
  whole = data.synthetic_dataset(60_000, seed=0)
  first_validation, _ = next(iter(splits.validation))
  np.testing.assert_array_equal(first_validation, next(iter(whole.skip(48_000)))[0])
  assert (splits.info.image_shape, splits.info.num_classes) == ((28, 28, 1), 10)


def test_synthetic_images_are_the_same_every_pass():
  ds = data.synthetic_dataset(4, seed=3)
  first, second = list(ds.as_numpy_iterator()), list(ds.as_numpy_iterator())
  np.testing.assert_array_equal(first[2][0], second[2][0])
  assert first[0][0].std() > 0


def test_steps_per_epoch_refuses_a_batch_larger_than_the_data():
  assert data.steps_per_epoch(data.synthetic_dataset(20, seed=0), 8) == 2
  with pytest.raises(UserError, match='--batch_size=32'):
    data.steps_per_epoch(data.synthetic_dataset(20, seed=0), 32)


def test_tfds_splits_come_from_the_dataset_info(mock_mnist, tmp_path):
  splits = data.load_splits('mnist', str(tmp_path), validation_split=0.2)
  assert splits.info.image_shape == (28, 28, 1) and splits.info.num_classes == 10
  assert splits.train.element_spec[0].dtype == tf.uint8


def test_a_dataset_missing_with_downloads_off_names_both_fixes(tmp_path):
  with pytest.raises(UserError, match='not prepared.*--nodownload.*prepare_data'):
    data.load_splits('mnist', str(tmp_path), 0.2, download=False)


def test_fit_and_recalibration_share_one_copy_of_the_training_split(monkeypatch):
  reads = []
  read = data.in_memory
  monkeypatch.setattr(data, 'in_memory', lambda ds: reads.append(ds) or read(ds))
  train = data.synthetic_dataset(16, seed=0)
  splits = data.Splits(train, train, train, DatasetInfo((28, 28, 1), 10, tuple('0123456789')))
  first = next(iter(splits.training_batches(4, seed=3)))
  again = next(iter(splits.training_batches(4, seed=3)))
  assert len(reads) == 1
  np.testing.assert_array_equal(first[0], again[0])
