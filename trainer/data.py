"""Input pipeline: images leave the host as uint8 at their stored size.

Resizing, scaling and channel handling live in the model (trainer/model.py), so
the host never holds a float or resized copy of a dataset and the accelerator
receives 28x28x1 bytes per MNIST image instead of 64x64x3 floats.

`load_splits` picks a source by the `--dataset` string:
  NAME         any tfds image-classification dataset (mnist, fashion_mnist, cifar10, ...)
  idx:DIR      MNIST-format IDX files in DIR (trainer/idx.py)
  synthetic    random images made on the fly, for benchmarks and smoke runs
"""
import contextlib
import dataclasses
import socket
from typing import Optional, Tuple

import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import downloader

from trainer import idx
from trainer.config import DatasetInfo
from trainer.errors import UserError

IDX_PREFIX = 'idx:'
SYNTHETIC = 'synthetic'
SYNTHETIC_SHAPE = (28, 28, 1)
SYNTHETIC_CLASSES = 10
SYNTHETIC_SIZES = {'train': 60_000, 'test': 10_000}


@dataclasses.dataclass(frozen=True)
class Splits:
  """Unbatched (uint8 image HxWxC, int64 label) datasets and what a model needs to know of them."""
  train: tf.data.Dataset
  validation: tf.data.Dataset
  test: tf.data.Dataset
  info: DatasetInfo


def load_splits(dataset: str,
                data_dir: Optional[str],
                validation_split: float,
                download: bool = True) -> Splits:
  """Returns train, validation (the last `validation_split` of train) and test."""
  if dataset == SYNTHETIC:
    return _synthetic_splits(validation_split)
  if dataset.startswith(IDX_PREFIX):
    train, test = idx.load_idx_dir(dataset[len(IDX_PREFIX):])
    train_part, validation = _split_tail(train, validation_split)
    return Splits(
        train_part, validation, test,
        DatasetInfo(idx.IMAGE_SHAPE, idx.NUM_CLASSES,
                    tuple(str(i) for i in range(idx.NUM_CLASSES))))
  return _tfds_splits(dataset, data_dir, validation_split, download)


def _tfds_splits(name, data_dir, validation_split, download):
  builder = prepared_builder(name, data_dir, download)
  info = image_classification_features(builder)
  percent = round(100 * (1 - validation_split))
  read = lambda split: builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
  # tfds slicing is deterministic: the validation set is always the same last part of train.
  return Splits(read(f'train[:{percent}%]'), read(f'train[{percent}%:]'), read('test'), info)


def prepared_builder(name: str, data_dir: Optional[str],
                     download: bool) -> tfds.core.DatasetBuilder:
  """The tfds builder of `name`, its data prepared in `data_dir`; downloads only if it is missing.

  A prepared dataset is read from disk with no network access at all.
  """
  builder = tfds_builder(name, data_dir)
  image_classification_features(builder)  # refuse other kinds of data before any download
  if builder.is_prepared():
    return builder
  if not download:
    raise UserError(f'dataset {name!r} is not prepared in --data_dir={builder.data_dir_root}; '
                    f'drop --nodownload to download it, or {_offline_fixes(name)}')
  download_and_prepare(builder)
  return builder


def _offline_fixes(name):
  return (f'prepare it on a machine with a network with python -m trainer.prepare_data '
          f'--dataset={name} --data_dir=DIR and pass --data_dir=DIR, or build it from local IDX '
          f'files with python -m trainer.prepare_data --dataset={name} --from_idx=IDX_DIR '
          f'--data_dir=DIR')


def tfds_builder(name: str, data_dir: Optional[str]) -> tfds.core.DatasetBuilder:
  try:
    return tfds.builder(name, data_dir=data_dir)
  # ValueError: a string tfds cannot parse as a name, e.g. a path.
  except (tfds.core.registered.DatasetNotFoundError, ValueError):
    raise UserError(
        f'--dataset={name!r} is not a tensorflow-datasets name; see '
        f'https://www.tensorflow.org/datasets/catalog, or use idx:DIR or synthetic') from None


def download_and_prepare(builder: tfds.core.DatasetBuilder) -> None:
  """Downloads from the dataset's source; never probes the prepared copies on GCS."""
  try:
    with _fail_fast_downloads():
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          try_download_gcs=False))
  except (OSError, tfds.download.DownloadError) as e:
    raise UserError(
        f'could not download {builder.name!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); '
        f'with no network, {_offline_fixes(builder.name)}') from None


@contextlib.contextmanager
def _fail_fast_downloads(socket_timeout_s=60):
  """Makes tfds's downloads fail at their first error, so a machine with no network fails in seconds.

  tfds retries each request 10 times with exponential backoff (measured: 204 s before
  MNIST's download gave up with no network), its parallel download threads log every
  retry after our error line, and it sets no socket timeout, so a silently dropped
  connection would wait forever. A rerun keeps the files that did download.
  """
  saved = downloader.MAX_RETRIES, socket.getdefaulttimeout()
  downloader.MAX_RETRIES = 0
  socket.setdefaulttimeout(socket_timeout_s)
  yield
  # Restored only after a success: after a failure, tfds's download threads that start
  # late (on a loaded machine) must fail at once too, not retry behind the error line.
  downloader.MAX_RETRIES = saved[0]
  socket.setdefaulttimeout(saved[1])


def image_classification_features(builder: tfds.core.DatasetBuilder) -> DatasetInfo:
  features = builder.info.features
  if 'image' not in features or 'label' not in features:
    raise UserError(f'--dataset={builder.name!r} has no image and label features; '
                    'choose an image-classification dataset')
  image_shape = tuple(features['image'].shape)
  if None in image_shape:
    raise UserError(f'--dataset={builder.name!r} has images of varying size {image_shape}; '
                    'only fixed-size datasets are supported')
  label = features['label']
  if not isinstance(label, tfds.features.ClassLabel):
    raise UserError(f'--dataset={builder.name!r} has labels that are not classes; '
                    'choose an image-classification dataset')
  return DatasetInfo(image_shape, label.num_classes, tuple(label.names))


def _split_tail(ds, validation_split):
  """Splits off the last `validation_split` of a dataset of known size, like tfds's 'train[80%:]'."""
  size = int(ds.cardinality())
  num_train = round(size * (1 - validation_split))
  return ds.take(num_train), ds.skip(num_train)


def _synthetic_splits(validation_split):
  train, validation = _split_tail(synthetic_dataset(SYNTHETIC_SIZES['train'], seed=0),
                                  validation_split)
  return Splits(
      train, validation, synthetic_dataset(SYNTHETIC_SIZES['test'], seed=1),
      DatasetInfo(SYNTHETIC_SHAPE, SYNTHETIC_CLASSES,
                  tuple(str(i) for i in range(SYNTHETIC_CLASSES))))


def synthetic_dataset(size: int,
                      seed: int,
                      image_shape: Tuple[int, int, int] = SYNTHETIC_SHAPE,
                      num_classes: int = SYNTHETIC_CLASSES) -> tf.data.Dataset:
  """Random uint8 images and labels, each a pure function of its index: no I/O, same every epoch."""

  def example(i: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    image_seed = tf.stack([tf.cast(i, tf.int32), seed])
    image = tf.random.stateless_uniform(image_shape, image_seed, maxval=256, dtype=tf.int32)
    label = tf.random.stateless_uniform([], image_seed + 1, maxval=num_classes, dtype=tf.int64)
    return tf.cast(image, tf.uint8), label

  return tf.data.Dataset.range(size).map(example, num_parallel_calls=tf.data.AUTOTUNE)


def num_examples(ds: tf.data.Dataset) -> int:
  size = int(ds.cardinality())
  if size < 0:
    raise ValueError('dataset size is unknown; the pipeline needs datasets of known size')
  return size


def in_memory(ds: tf.data.Dataset) -> Tuple[tf.Tensor, tf.Tensor]:
  """All of `ds` as two tensors: uint8 images [N, H, W, C] and int64 labels [N].

  Read in one complete pass, so nothing can keep a partial copy. (`ds.cache()` could: an
  iterator that stopped early on a cached tfds dataset, such as `take(1)` or fit's
  validation_steps, sometimes left the cache marked complete with only what prefetching
  had read, and every later pass of that dataset was truncated.) The uint8 examples of
  a small dataset are small: MNIST's 60,000 training digits are 47 MB.
  """
  return tf.data.Dataset.get_single_element(ds.batch(num_examples(ds)))


def training_batches(ds: tf.data.Dataset,
                     batch_size: int,
                     *,
                     seed: int = 0,
                     first_step: int = 0) -> tf.data.Dataset:
  """Shuffled full batches, forever, starting at batch `first_step`.

  Example n of the stream is a pure function of (seed, n): pass p = n // size over `ds`
  is the permutation of (seed, p). So a run resumed at step k trains on exactly the
  batches an uninterrupted run trains on from step k, and no epoch repeats another's order.
  """
  images, labels = in_memory(ds)
  size = num_examples(ds)

  def example(n: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    position = tf.random.experimental.index_shuffle(
        n % size, tf.stack([tf.constant(seed, tf.int64), n // size]),
        tf.constant(size - 1, tf.int64))
    return tf.gather(images, position), tf.gather(labels, position)

  stream = tf.data.Dataset.range(first_step * batch_size, tf.int64.max)
  stream = stream.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return _distributable(stream.batch(batch_size, drop_remainder=True))


def evaluation_batches(ds: tf.data.Dataset,
                       batch_size: int,
                       max_batches: int = 0) -> tf.data.Dataset:
  """`ds` in order, in batches (the last one partial); only the first `max_batches` if set.

  A dataset of known length: `fit` and `evaluate` take its cardinality as their steps.
  """
  batches = tf.data.Dataset.from_tensor_slices(in_memory(ds)).batch(batch_size)
  if max_batches:
    batches = batches.take(max_batches)
  return _distributable(batches)


def _distributable(ds):
  options = tf.data.Options()
  # Shard by element: MNIST's train split is a single file, and sharding by file
  # would leave all but one worker without data.
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  options.deterministic = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(ds: tf.data.Dataset, batch_size: int) -> int:
  """Full training batches in one pass over `ds`."""
  steps = num_examples(ds) // batch_size
  if steps == 0:
    raise UserError(f'--batch_size={batch_size} is larger than the {num_examples(ds)} training '
                    'examples; lower --batch_size')
  return steps
