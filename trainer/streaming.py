"""Training examples read from a split's files as training goes, for splits over the memory budget.

The in-memory stream (trainer/data.py's training_batches) makes example n a pure function of
(seed, n): pass p = n // size over the split is the permutation of (seed, p), so a run
resumed at step k trains on the batches an uninterrupted run trains on. The streams here
keep that promise as far as their files allow:

  IndexedFiles  one file per example (a folder of images). Example n is the file at the
                in-memory stream's position n, read and decoded when it is needed: the same
                stream, so the memory budget never changes what a folder run trains on.
  RecordFiles   the TFRecord shards of a tfds dataset, whose records cannot be read one by
                one. Pass p reads
                  1. the shards in the order of a permutation of (seed, p),
                  2. CYCLE shards at a time, one record from each in turn (a deterministic
                     interleave),
                  3. through a shuffle buffer of about SHUFFLE_BUFFER_BYTES of records,
                     filled and emptied a window at a time, each window permuted with
                     (seed, p, window).
                Pass p is thus a pure function of (seed, p), and example n is element
                n % size of pass n // size. A run resumed at step k rebuilds that pass and
                skips its first n % size records (read, not decoded). Runs resume at epoch
                ends, so that is the few batches by which the epochs have drifted from the
                passes.

What streaming does not keep:
  - RecordFiles' passes are not the in-memory permutations: a --memory_budget_mb that moves
    a tfds split between memory and streaming changes the order of the batches after it
    (each pass still holds every example once). The buffer's size does not depend on the
    budget or the machine, so a change of budget that keeps the split streamed changes nothing.
  - Multi-worker jobs (W workers, L = batch / W examples a step each): IndexedFiles keeps
    the single-worker stream exactly, worker w reading only the files of its L examples of
    each step. RecordFiles with at least W shards gives worker w shards w, w + W, ... (by
    file, as the training of large datasets should be sharded), its own passes over them,
    so the batches differ from a single worker's and from those of another worker count.
    With fewer shards than workers each worker reads every shard and keeps its L examples
    of each step of the single-worker stream (by data).
"""
import abc
import dataclasses
from typing import Callable, Sequence, Tuple

import tensorflow as tf

# Shards read at once: enough to mix classes that a dataset's writer kept together.
CYCLE = 16
# Bounds each worker's memory (three windows at most: one emptying, one ready, one filling)
# whatever the split's size; a fixed size, not a share of the budget or of the RAM, keeps
# the stream the same on a machine of another size.
SHUFFLE_BUFFER_BYTES = 16 << 20


def permuted_index(n: tf.Tensor, size: int, seed: int) -> tf.Tensor:
  """The split position of example n of a stream whose pass p is the permutation of (seed, p)."""
  return tf.random.experimental.index_shuffle(n % size,
                                              tf.stack([tf.constant(seed, tf.int64), n // size]),
                                              tf.constant(size - 1, tf.int64))


class Stream(abc.ABC):
  """A split that training reads from its files, never whole."""

  @property
  @abc.abstractmethod
  def size(self) -> int:
    """Examples in one pass."""

  @abc.abstractmethod
  def examples(self,
               seed: int,
               first: int,
               workers: int = 1,
               worker: int = 0,
               per_worker: int = 1) -> tf.data.Dataset:
    """Worker `worker` of `workers`' (uint8 image, int64 label) examples, forever, from its
    own example `first`; it takes `per_worker` examples of each training step."""


@dataclasses.dataclass(frozen=True)
class IndexedFiles(Stream):
  """One encoded image per file; `decode` makes it a stored image."""
  paths: Tuple[str, ...]
  labels: Tuple[int, ...]
  decode: Callable[[tf.Tensor], tf.Tensor]

  @property
  def size(self) -> int:
    return len(self.paths)

  def examples(self, seed, first, workers=1, worker=0, per_worker=1):
    paths, labels = tf.constant(self.paths), tf.constant(self.labels, tf.int64)
    size = self.size

    def example(m):
      # Worker w's example m is the single-worker stream's example n: its L of each step.
      n = (m // per_worker) * per_worker * workers + worker * per_worker + m % per_worker
      i = permuted_index(n, size, seed)
      return self.decode(tf.io.read_file(paths[i])), labels[i]

    return tf.data.Dataset.range(first, tf.int64.max).map(example,
                                                          num_parallel_calls=tf.data.AUTOTUNE,
                                                          deterministic=True)


@dataclasses.dataclass(frozen=True)
class Shard:
  """Records [skip, skip + take) of a TFRecord file: tfds's FileInstruction."""
  path: str
  skip: int
  take: int


@dataclasses.dataclass(frozen=True)
class RecordFiles(Stream):
  """Serialized examples in TFRecord shards; `parse` makes one a (stored image, label)."""
  shards: Tuple[Shard, ...]
  parse: Callable[[tf.Tensor], Tuple[tf.Tensor, tf.Tensor]]
  record_bytes: float  # the mean size of a serialized example

  @property
  def size(self) -> int:
    return sum(shard.take for shard in self.shards)

  @property
  def shuffle_buffer(self) -> int:
    return max(1, min(self.size, int(SHUFFLE_BUFFER_BYTES // max(self.record_bytes, 1.0))))

  def examples(self, seed, first, workers=1, worker=0, per_worker=1):
    if workers > 1 and len(self.shards) >= workers:
      records = _passes(self.shards[worker::workers], seed, first, self.shuffle_buffer)
    else:
      # Every worker reads the single-worker stream from the same step and keeps its part.
      records = _passes(self.shards, seed, first * workers, self.shuffle_buffer)
      if workers > 1:
        records = records.batch(per_worker).shard(workers, worker).unbatch()
    return records.map(self.parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _passes(shards: Sequence[Shard], seed: int, first: int, buffer: int) -> tf.data.Dataset:
  """Serialized records of pass after pass over `shards`, from record `first` on."""
  size = sum(shard.take for shard in shards)
  paths = tf.constant([shard.path for shard in shards])
  skips = tf.constant([shard.skip for shard in shards], tf.int64)
  takes = tf.constant([shard.take for shard in shards], tf.int64)

  def one_pass(p):
    pass_seed = tf.stack([tf.constant(seed, tf.int64), p])
    order = tf.random.experimental.index_shuffle(tf.range(len(shards), dtype=tf.int64), pass_seed,
                                                 tf.constant(len(shards) - 1, tf.int64))
    files = tf.data.Dataset.from_tensor_slices(
        (tf.gather(paths, order), tf.gather(skips, order), tf.gather(takes, order)))
    records = files.interleave(
        lambda path, skip, take: tf.data.TFRecordDataset(path).skip(skip).take(take),
        cycle_length=min(len(shards), CYCLE),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    return _shuffle_in_windows(records, buffer, pass_seed)

  return tf.data.Dataset.range(first // size, tf.int64.max).flat_map(one_pass).skip(first % size)


def _shuffle_in_windows(records: tf.data.Dataset, window: int, seed: tf.Tensor) -> tf.data.Dataset:
  """A shuffle buffer of `window` records, filled and emptied a window at a time: each window
  comes out in a permutation of (seed, its index).

  Stateless, unlike tf.data's shuffle, whose seed mixes with TensorFlow's global seed (and
  fails to trace for a seed computed in the graph under a global seed of 0, --seed's
  default).
  """

  def permuted(index, window_records):
    count = tf.shape(window_records, out_type=tf.int64)[0]
    order = tf.random.experimental.index_shuffle(
        tf.range(count), tf.random.experimental.stateless_fold_in(seed, index), count - 1)
    return tf.data.Dataset.from_tensor_slices(tf.gather(window_records, order))

  # The next window is read while this one empties, or training would wait for it.
  return records.batch(window).prefetch(1).enumerate().flat_map(permuted)
