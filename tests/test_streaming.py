"""Splits over --memory_budget_mb, streamed from their files (trainer/streaming.py): what each
pass holds, that a resumed run sees the batches an uninterrupted one would, and how workers
share the files."""
import collections
import dataclasses
import functools
import hashlib
import os
import signal

import numpy as np
import pytest
import tensorflow as tf

from helpers import run_python, write_image_folder
from trainer import data, prepare_data, runs
from trainer.config import SourceConfig

TINY_BUDGET_MB = 0.01  # 10 KiB: every split here is over it
BATCH = 12


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  """A folder of 120 images in 3 classes (87 train, 21 validation, 12 test), and the same
  prepared as a tfds dataset in 9 shards; returns (folder, tfds name, data_dir)."""
  root = tmp_path_factory.mktemp('streaming')
  directory = str(root / 'shapes')
  write_image_folder(directory, ('a', 'b', 'c'), per_class=40)
  saved = prepare_data.FOLDER_SHARD_BYTES
  prepare_data.FOLDER_SHARD_BYTES = 30_000  # of the 87 training images' 267 KB
  try:
    name, _ = prepare_data.prepare_folder(directory, str(root / 'tfds'), 32, 0.2, SourceConfig())
  finally:
    prepare_data.FOLDER_SHARD_BYTES = saved
  return directory, name, str(root / 'tfds')


@functools.lru_cache()
def load(dataset, data_dir, budget_mb):
  """Each source once a module: a folder is scanned each time it is loaded."""
  return data.load_splits(dataset,
                          data_dir,
                          0.2,
                          download=False,
                          image_size=32,
                          memory_budget_mb=budget_mb)


def folder_splits(folders, budget_mb=0.0):
  return load(f'folder:{folders[0]}', None, budget_mb)


def prepared_splits(folders, budget_mb=0.0):
  return load(folders[1], folders[2], budget_mb)


def digests(batches, count):
  """One digest per example of the first `count` batches, in order."""
  return [
      hashlib.sha1(image.tobytes() + label.tobytes()).hexdigest()
      for images, labels in batches.take(count).as_numpy_iterator()
      for image, label in zip(images, labels)
  ]


def split_digests(ds):
  return digests(ds.batch(1000), 1000)


def test_only_the_splits_over_the_budget_stream(folders):
  assert not folder_splits(folders).streams
  assert set(folder_splits(folders, TINY_BUDGET_MB).streams) == {'train', 'validation', 'test'}
  # 87 training images of 32x32x3 are 261 KiB; the 21 validation images 63 KiB.
  assert set(prepared_splits(folders, 0.1).streams) == {'train'}


def test_the_budget_defaults_to_a_quarter_of_the_memory_there_is():
  available = data.available_memory_bytes()
  physical = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  assert 0 < available <= physical
  assert data.memory_budget_bytes(0) == available // 4
  assert data.memory_budget_bytes(1.5) == 3 << 19


def test_a_folder_streams_exactly_the_batches_it_trains_on_from_memory(folders):
  in_memory = folder_splits(folders).training_batches(BATCH, seed=1)
  streamed = folder_splits(folders, TINY_BUDGET_MB).training_batches(BATCH, seed=1)
  for (a_images, a_labels), (b_images, b_labels) in zip(in_memory.take(16), streamed.take(16)):
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_labels, b_labels)


def test_each_streamed_pass_holds_every_example_once_in_an_order_of_its_own(folders):
  splits = prepared_splits(folders, TINY_BUDGET_MB)
  whole = sorted(split_digests(splits.train))
  assert len(whole) == 87
  stream = digests(splits.training_batches(BATCH, seed=1), 22)  # 3 passes and a bit
  passes = [stream[i * 87:(i + 1) * 87] for i in range(3)]
  for one_pass in passes:
    assert sorted(one_pass) == whole
  assert passes[0] != passes[1] != passes[2]
  # The same whatever TensorFlow's global seed (train sets it from --seed, 0 by default).
  tf.random.set_seed(0)
  assert stream == digests(
      prepared_splits(folders, TINY_BUDGET_MB).training_batches(BATCH, seed=1), 22)
  assert stream[:84] != digests(splits.training_batches(BATCH, seed=2), 7)
  # Not the file order: the shards and the records in them are shuffled.
  assert passes[0] != split_digests(splits.train)


@pytest.mark.parametrize('source', [folder_splits, prepared_splits])
def test_a_stream_started_at_step_k_is_the_rest_of_the_stream_from_zero(folders, source):
  """What a resumed run trains on; step 9 starts in the middle of the second pass."""
  splits = source(folders, TINY_BUDGET_MB)
  whole = digests(splits.training_batches(BATCH, seed=3), 16)
  resumed = digests(
      source(folders, TINY_BUDGET_MB).training_batches(BATCH, seed=3, first_step=9), 7)
  assert resumed == whole[9 * BATCH:]


@pytest.mark.parametrize('source', [folder_splits, prepared_splits])
def test_a_streamed_split_is_evaluated_in_its_order_from_its_files(folders, source):
  streamed = source(folders, TINY_BUDGET_MB).evaluation_batches('validation', 5)
  in_memory = source(folders).evaluation_batches('validation', 5)
  assert [len(labels) for _, labels in streamed] == [5] * 4 + [1]
  assert digests(streamed, 100) == digests(in_memory, 100)
  assert len(list(source(folders, TINY_BUDGET_MB).evaluation_batches('test', 5, 2))) == 2


# ---- Several workers: each reads its own files.


def worker_batches(stream, workers, steps, batch=BATCH):
  """Each worker's per-step batches, as distribute_datasets_from_function asks for them."""
  return [
      digests(
          data.stream_batches(stream,
                              batch,
                              seed=5,
                              context=tf.distribute.InputContext(num_input_pipelines=workers,
                                                                 input_pipeline_id=worker,
                                                                 num_replicas_in_sync=workers)),
          steps) for worker in range(workers)
  ]


def test_workers_of_a_folder_share_each_step_of_the_single_worker_stream(folders):
  stream = folder_splits(folders, TINY_BUDGET_MB).streams['train']
  single = digests(data.stream_batches(stream, BATCH, seed=5), 10)
  workers = worker_batches(stream, 3, 10)
  per_worker = BATCH // 3
  for step in range(10):
    together = [d for w in workers for d in w[step * per_worker:(step + 1) * per_worker]]
    assert together == single[step * BATCH:(step + 1) * BATCH]


def test_workers_read_disjoint_shards_when_there_are_enough(folders):
  stream = prepared_splits(folders, TINY_BUDGET_MB).streams['train']
  assert len(stream.shards) == 9
  whole = collections.Counter(split_digests(prepared_splits(folders).train))
  mine = [sum(shard.take for shard in stream.shards[w::2]) for w in range(2)]
  # A pass over each worker's own shards (a multiple of the 6 examples a step it takes).
  workers = worker_batches(stream, 2, max(mine))
  first_passes = [workers[w][:mine[w]] for w in range(2)]
  assert not set(first_passes[0]) & set(first_passes[1])
  assert collections.Counter(first_passes[0] + first_passes[1]) == whole
  for w in range(2):
    assert sorted(workers[w][mine[w]:2 * mine[w]]) == sorted(first_passes[w])


def test_with_fewer_shards_than_workers_each_keeps_its_part_of_every_step(folders):
  stream = prepared_splits(folders, TINY_BUDGET_MB).streams['train']
  stream = dataclasses.replace(stream, shards=stream.shards[:1])
  single = digests(data.stream_batches(stream, BATCH, seed=5), 5)
  workers = worker_batches(stream, 2, 5)
  for step in range(5):
    together = [d for w in workers for d in w[6 * step:6 * step + 6]]
    assert together == single[BATCH * step:BATCH * (step + 1)]


def test_two_replicas_train_on_the_single_device_batches(folders):
  splits = folder_splits(folders, TINY_BUDGET_MB)
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  distributed = splits.training_batches(BATCH, seed=7, strategy=strategy)
  single = splits.training_batches(BATCH, seed=7)
  for (images, labels), (expected_images, expected_labels) in zip(distributed, single.take(4)):
    np.testing.assert_array_equal(tf.concat(strategy.experimental_local_results(images), 0),
                                  expected_images)
    np.testing.assert_array_equal(tf.concat(strategy.experimental_local_results(labels), 0),
                                  expected_labels)


# ---- A training run killed and resumed on a streamed split.

# Runs trainer.main with a small stand-in for DenseNet (the stream is under test), writes
# "step digest" for every training batch the stream makes, and SIGKILLs the process at the
# end of epoch KILL_AT (after every callback, the epoch checkpoint included); 0: no kill.
_RECORDING_MAIN = '''
import hashlib, os, runpy, signal, sys
import tensorflow as tf
from trainer import callbacks, data, train
from trainer.keras_lib import keras
record, kill_at, sys.argv = sys.argv[1], int(sys.argv[2]), ['trainer.main', *sys.argv[3:]]

def stand_in(config, input_shape, num_classes):
  images = keras.Input(input_shape, dtype='uint8')
  x = keras.layers.Rescaling(1 / 255, name='backbone_input')(images)
  backbone = keras.Sequential([keras.layers.GlobalAveragePooling2D()], name='densenet121')
  return keras.Model(images, keras.layers.Dense(num_classes, activation='softmax')(backbone(x)))
train.build_model = stand_in

def write(step, images, labels):
  digest = hashlib.sha1(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()
  with open(record, 'a') as f:
    f.write(f'{int(step)} {digest}\\n')
  return step

def tap(step, batch):
  written = tf.py_function(write, [step, *batch], tf.int64)
  with tf.control_dependencies([written]):
    return tuple(tf.identity(t) for t in batch)

stream_batches = data.stream_batches
data.stream_batches = lambda *args, first_step=0, **kwargs: stream_batches(
    *args, first_step=first_step, **kwargs).enumerate(first_step).map(tap)

class Kill(keras.callbacks.Callback):
  def on_epoch_end(self, epoch, logs=None):
    if epoch + 1 == kill_at:
      os.kill(os.getpid(), signal.SIGKILL)
training_callbacks = callbacks.training_callbacks
callbacks.training_callbacks = lambda *args: training_callbacks(*args) + [Kill()]
runpy.run_module('trainer.main', run_name='__main__', alter_sys=True)
'''


def recorded_steps(path):
  with open(path) as f:
    return dict(line.split() for line in f)


@pytest.mark.slow
def test_a_killed_run_resumes_on_the_batches_an_uninterrupted_run_trains_on(folders, tmp_path):
  _, name, data_dir = folders
  run_dir = tmp_path / 'run'
  # 87 images, batches of 8: epoch 2 starts at step 10, in the middle of the first pass.
  flags = [
      f'--dataset={name}', f'--data_dir={data_dir}', f'--memory_budget_mb={TINY_BUDGET_MB}',
      '--image_size=32', '--batch_size=8', '--epochs=2', '--eval_steps=1', '--weights=none',
      '--noexport', '--recalibrate_batchnorm=0', f'--run_dir={run_dir}'
  ]
  killed = run_python('-c', _RECORDING_MAIN, str(tmp_path / 'killed.txt'), '1', *flags)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  resumed = run_python('-c', _RECORDING_MAIN, str(tmp_path / 'resumed.txt'), '0', *flags)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Epoch 2/2' in resumed.stdout and 'Epoch 1/2' not in resumed.stdout
  assert (run_dir / runs.METRICS_FILE).exists()

  uninterrupted = prepared_splits(folders, TINY_BUDGET_MB).training_batches(8, seed=0)
  expected = {
      str(step): hashlib.sha1(images.tobytes() + labels.tobytes()).hexdigest()
      for step, (images, labels) in enumerate(uninterrupted.take(30).as_numpy_iterator())
  }
  killed_steps, resumed_steps = (
      recorded_steps(tmp_path / name) for name in ('killed.txt', 'resumed.txt'))
  assert set(map(int, killed_steps)) >= set(range(10))
  assert min(map(int, resumed_steps)) == 10 and set(map(int, resumed_steps)) >= set(range(10, 20))
  for steps in (killed_steps, resumed_steps):
    assert all(digest == expected[step] for step, digest in steps.items() if step in expected)
