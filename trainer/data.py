"""Input pipeline: images leave the host as uint8 at their stored size.

Resizing, scaling and channel handling live in the model (trainer/model.py), so
the host never holds a float or resized copy of a dataset and the accelerator
receives 28x28x1 bytes per MNIST image instead of 64x64x3 floats.

`load_splits` picks a source by the `--dataset` string:
  NAME         any tfds image-classification dataset (mnist, fashion_mnist, cifar10,
               tf_flowers, ...), or one that prepare_data wrote from a folder
  folder:DIR   a folder of images in class subfolders (trainer/folder.py)
  idx:DIR      MNIST-format IDX files in DIR (trainer/idx.py)
  synthetic    random images made on the fly, for benchmarks and smoke runs

Images of varying size (folders; tfds datasets such as tf_flowers) cannot be batched as
they are. They are decoded, made square and resized on the host, in the tf.data graph
(trainer/images.py), to --image_size, still uint8: the batches have one shape and the
model's resize is the identity. Fixed-size datasets are stored as they are.

A split whose uint8 images fit the memory budget (--memory_budget_mb) is read whole into
host memory (`in_memory`); a larger one is read from its files as training goes
(trainer/streaming.py), and `Splits.streams` holds it. `Splits.training_batches` and
`Splits.evaluation_batches` choose between the two.
"""
import contextlib
import dataclasses
import functools
import os
import re
import socket
from typing import Callable, Dict, Mapping, Optional, Tuple

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.core.download import downloader

from trainer import folder, idx, images, streaming
from trainer.config import ASPECTS, DatasetInfo, ModelConfig, SourceConfig, TrainConfig
from trainer.errors import UserError

IDX_PREFIX = 'idx:'
FOLDER_PREFIX = 'folder:'
SYNTHETIC = 'synthetic'
SYNTHETIC_SHAPE = (28, 28, 1)
SYNTHETIC_CLASSES = 10
SYNTHETIC_SIZES = {'train': 60_000, 'test': 10_000}
SPLITS = ('train', 'validation', 'test')
# Of the machine's memory, what the default budget lets one split take: the training
# split, the two others, the model and TensorFlow must all fit.
DEFAULT_BUDGET_SHARE = 4
DEFAULT_SOURCE = SourceConfig()
CGROUP_MEMORY_LIMITS = ('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes')


@dataclasses.dataclass(frozen=True)
class Splits:
  """Unbatched (uint8 image HxWxC, int64 label) datasets, each in its order, and what a model
  needs to know of them."""
  train: tf.data.Dataset
  validation: tf.data.Dataset
  test: tf.data.Dataset
  info: DatasetInfo
  # The splits over the memory budget, by name: read from their files, never whole.
  streams: Mapping[str, streaming.Stream] = dataclasses.field(default_factory=dict)

  def training_batches(self,
                       batch_size: int,
                       *,
                       seed: int = 0,
                       first_step: int = 0,
                       strategy: Optional[tf.distribute.Strategy] = None) -> tf.data.Dataset:
    """The training stream (see the module-level `training_batches`), from memory or files.

    Given the `strategy` that `fit` runs under, a streamed split is distributed here, each
    worker reading its own part of the files (trainer/streaming.py); without it, every
    worker would read all of them.
    """
    stream = self.streams.get('train')
    if stream is None:
      return training_batches_of(self._train_in_memory,
                                 batch_size,
                                 seed=seed,
                                 first_step=first_step)
    if strategy is None:
      return stream_batches(stream, batch_size, seed=seed, first_step=first_step)
    return strategy.distribute_datasets_from_function(lambda context: stream_batches(
        stream, batch_size, seed=seed, first_step=first_step, context=context))

  @functools.cached_property
  def _train_in_memory(self) -> Tuple[tf.Tensor, tf.Tensor]:
    """The training split read once: fit's stream and BatchNorm recalibration's share it
    (a second copy held the whole job's peak memory 0.45 GiB higher on MNIST at 64x64)."""
    return in_memory(self.train)

  def evaluation_batches(self,
                         split: str,
                         batch_size: int,
                         max_batches: int = 0) -> tf.data.Dataset:
    """Split `split` ('validation' or 'test') in order, as the module-level
    `evaluation_batches`, from memory or, if streamed, from its files."""
    ds = getattr(self, split)
    if split in self.streams:
      return _ordered_batches(ds, batch_size, max_batches)
    return evaluation_batches(ds, batch_size, max_batches)


def splits_for(config: TrainConfig) -> Splits:
  """The splits a run trains and is evaluated on: load_splits with the run's settings."""
  return load_splits(config.dataset,
                     config.data_dir,
                     config.validation_split,
                     config.download,
                     image_size=config.model.image_size,
                     source=config.source,
                     memory_budget_mb=config.memory_budget_mb)


def load_splits(dataset: str,
                data_dir: Optional[str],
                validation_split: float,
                download: bool = True,
                *,
                image_size: int = ModelConfig.image_size,
                source: SourceConfig = DEFAULT_SOURCE,
                memory_budget_mb: float = TrainConfig.memory_budget_mb) -> Splits:
  """Returns train, validation (the data's own, or the last `validation_split` of train) and
  test (the data's own, or carved from train: see SourceConfig.test_fraction).

  `image_size` is the stored side of images of varying size; `source` says how they are
  stored; splits over `memory_budget_mb` (0: a share of the machine's memory) stream.
  """
  if dataset == SYNTHETIC:
    return _synthetic_splits(validation_split)
  if dataset.startswith(IDX_PREFIX):
    train, test = idx.load_idx_dir(dataset[len(IDX_PREFIX):])
    train_part, validation = _split_tail(train, validation_split)
    return Splits(
        train_part, validation, test,
        DatasetInfo(idx.IMAGE_SHAPE, idx.NUM_CLASSES,
                    tuple(str(i) for i in range(idx.NUM_CLASSES))))
  budget = memory_budget_bytes(memory_budget_mb)
  if dataset.startswith(FOLDER_PREFIX):
    return _folder_splits(dataset[len(FOLDER_PREFIX):], validation_split, image_size, source,
                          budget)
  return _tfds_splits(dataset, data_dir, validation_split, download, image_size, source, budget)


# ---- The memory budget


def memory_budget_bytes(memory_budget_mb: float) -> int:
  """--memory_budget_mb in bytes; 0: a quarter of the memory this process may use."""
  if memory_budget_mb:
    return round(memory_budget_mb * 2**20)
  return available_memory_bytes() // DEFAULT_BUDGET_SHARE


def available_memory_bytes() -> int:
  """The machine's memory, or its container's limit if lower (cgroup v2 or v1)."""
  limit = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  for path in CGROUP_MEMORY_LIMITS:
    try:
      with open(path) as f:
        text = f.read().strip()
    except OSError:
      continue
    if text.isdigit():
      limit = min(limit, int(text))
  return limit


def _over_budget(name: str, num_examples: int, info: DatasetInfo, budget: int) -> bool:
  """Whether split `name` streams; logs the choice."""
  size = num_examples * info.image_shape[0] * info.image_shape[1] * info.image_shape[2]
  streamed = size > budget
  logging.info('%s split: %d images, %.3g MiB as uint8, %s the %.3g MiB memory budget: %s', name,
               num_examples, size / 2**20, 'over' if streamed else 'within', budget / 2**20,
               'streamed from its files' if streamed else 'held in memory')
  return streamed


# ---- Folders


def _folder_splits(directory, validation_split, image_size, source, budget):
  found = folder.read_folder(directory, validation_split, source.test_fraction, source.channels,
                             source.skip_unreadable)
  info = DatasetInfo((image_size, image_size, found.channels), len(found.class_names),
                     found.class_names, source.aspect)
  decode = stored_image_decoder(found.channels, image_size, source.aspect)
  datasets = {name: folder_examples(split, decode) for name, split in found.splits.items()}
  streams = {
      name: streaming.IndexedFiles(split.paths, split.labels, decode)
      for name, split in found.splits.items()
      if _over_budget(name, len(split.paths), info, budget)
  }
  logging.info('%s: %d classes, stored as %s uint8 images', directory, info.num_classes,
               'x'.join(map(str, info.image_shape)))
  return Splits(datasets['train'], datasets['validation'], datasets['test'], info, streams)


def stored_image_decoder(channels: int, size: int, aspect: str) -> Callable[[tf.Tensor], tf.Tensor]:
  """Encoded image bytes to the stored uint8 [size, size, channels]."""
  return lambda contents: images.decode_image(contents, size, size, channels, aspect)


def folder_examples(split: folder.Split, decode: Callable[[tf.Tensor],
                                                          tf.Tensor]) -> tf.data.Dataset:
  """The split's files in order, decoded: (uint8 image, int64 label), of known length."""
  files = tf.data.Dataset.from_tensor_slices(
      (tf.constant(split.paths, tf.string), tf.constant(split.labels, tf.int64)))
  return files.map(lambda path, label: (decode(tf.io.read_file(path)), label),
                   num_parallel_calls=tf.data.AUTOTUNE,
                   deterministic=True)


# ---- tensorflow-datasets


def _tfds_splits(name, data_dir, validation_split, download, image_size, source, budget):
  builder = prepared_builder(name, data_dir, download)
  features = image_classification_features(builder)
  split_names = tfds_split_names(builder, validation_split, source.test_fraction)
  if None not in features.image_shape:
    info, decoders, decode = features, None, None
  else:
    # Decoded here rather than by tfds: its decoder drops alpha and truncates 16-bit PNGs.
    channels = int(source.channels) if source.channels != 'auto' else features.image_shape[2] or 3
    info = DatasetInfo((image_size, image_size, channels), features.num_classes,
                       features.class_names, source.aspect)
    decoders = {'image': tfds.decode.SkipDecoding()}
    decode = stored_image_decoder(channels, image_size, source.aspect)
    logging.info('%s has images of varying size; stored as %s uint8 images', name,
                 'x'.join(map(str, info.image_shape)))

  def read(split):
    # Not as_supervised: a dataset prepare_data wrote has no supervised keys, only the features.
    examples = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
    return examples.map(lambda example: _image_and_label(example, decode),
                        num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)

  datasets = {split: read(split_names[split]) for split in SPLITS}
  # tfds.testing.mock_data's datasets have no files (nor split metadata) to stream from.
  streams = {
      split: _record_stream(builder, split_names[split], decoders, decode)
      for split in SPLITS
      if builder.info.splits and _over_budget(split, num_examples(datasets[split]), info, budget)
  }
  return Splits(datasets['train'], datasets['validation'], datasets['test'], info, streams)


def _image_and_label(example, decode):
  image = example['image'] if decode is None else decode(example['image'])
  return image, example['label']


def tfds_split_names(builder: tfds.core.DatasetBuilder, validation_split: float,
                     test_fraction: float) -> Dict[str, str]:
  """The tfds split (or slice of train) that each of train, validation and test reads.

  The dataset's own validation and test splits if it has them, else slices of train: the
  last `test_fraction` for test, then the last `validation_split` of the rest for
  validation. tfds slicing is deterministic, and tfds shuffled the examples as it wrote
  them, so a slice holds every class.
  """
  available = set(builder.info.splits)
  has_test = 'test' in available or not available  # none known: tfds.testing.mock_data
  has_validation = 'validation' in available
  test_start = 100 if has_test else round(100 * (1 - test_fraction))
  train_end = test_start if has_validation else round(test_start * (1 - validation_split))
  validation = f'train[{train_end}%:{test_start}%]' if test_start < 100 else f'train[{train_end}%:]'
  return {
      'train': f'train[:{train_end}%]',
      'validation': 'validation' if has_validation else validation,
      'test': 'test' if has_test else f'train[{test_start}%:]',
  }


def _record_stream(builder, split, decoders, decode):
  features = builder.info.features

  def parse(record):
    return _image_and_label(features.deserialize_example(record, decoders=decoders), decode)

  whole = builder.info.splits[split.split('[')[0]]
  shards = tuple(
      streaming.Shard(str(instruction.filename), instruction.skip, instruction.take)
      for instruction in builder.info.splits[split].file_instructions)
  return streaming.RecordFiles(shards, parse, int(whole.num_bytes) / max(whole.num_examples, 1))


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
        f'--dataset={name!r} is not a tensorflow-datasets name, nor a dataset prepare_data wrote '
        f'in --data_dir={data_dir}; see https://www.tensorflow.org/datasets/catalog, or use '
        'folder:DIR, idx:DIR or synthetic') from None
  # tfds asserts that the version asked for is one its code or --data_dir has.
  except AssertionError:
    raise UserError(f'--dataset={name!r}: tensorflow-datasets has no such version; '
                    f'{_versions_fix(name, data_dir)}') from None


def _versions_fix(name, data_dir):
  """Which versions of `name` (NAME:VERSION or NAME/CONFIG:VERSION) exist, as a fix."""
  base = name.split(':')[0]
  try:
    builder = tfds.builder(base, data_dir=data_dir)
  except (tfds.core.registered.DatasetNotFoundError, ValueError, AssertionError):
    return 'give a version the dataset has, or none for its latest'
  versions = sorted({str(v) for v in [builder.version, *builder.supported_versions]})
  return (f'it has {", ".join(versions)}: use --dataset={base}:{versions[-1]}, or '
          f'--dataset={base} for version {builder.version}')


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

  Both settings are the process's, and restored as the block ends, however it ends. After
  a failure, tfds's download threads that have not started yet (on a loaded machine) would
  then retry for minutes behind the error line, so first the downloads still queued are
  cancelled and those running, which fail at once, are waited for.
  """
  saved = downloader.MAX_RETRIES, socket.getdefaulttimeout()
  downloader.MAX_RETRIES = 0
  socket.setdefaulttimeout(socket_timeout_s)
  try:
    yield
  except BaseException:
    _stop_downloads()
    raise
  finally:
    downloader.MAX_RETRIES = saved[0]
    socket.setdefaulttimeout(saved[1])


def _stop_downloads():
  """Cancels tfds's queued downloads and waits for its running ones; the next download starts
  a fresh downloader (tfds keeps one per process, made by a cached function)."""
  # The arguments tfds's DownloadManager passes, so the cache returns its downloader.
  tfds_downloader = downloader.get_downloader(max_simultaneous_downloads=None)
  tfds_downloader._executor.shutdown(wait=True, cancel_futures=True)  # pylint: disable=protected-access
  downloader.get_downloader.cache_clear()


def image_classification_features(builder: tfds.core.DatasetBuilder) -> DatasetInfo:
  """The dataset's image shape (None where images vary) and classes; refuses other data."""
  features = builder.info.features
  if 'image' not in features or 'label' not in features:
    raise UserError(f'--dataset={builder.name!r} has no image and label features; '
                    'choose an image-classification dataset')
  image_shape = tuple(features['image'].shape)
  label = features['label']
  if not isinstance(label, tfds.features.ClassLabel):
    raise UserError(f'--dataset={builder.name!r} has labels that are not classes; '
                    'choose an image-classification dataset')
  return DatasetInfo(image_shape, label.num_classes, tuple(label.names),
                     stored_aspect(builder.info.description or ''))


def stored_description(shape: Tuple[int, ...], aspect: str) -> str:
  """How a prepared folder's description says its files were fitted (see `stored_aspect`)."""
  return f'stored at {"x".join(map(str, shape))} ({aspect})'


def stored_aspect(description: str) -> Optional[str]:
  """The aspect a dataset prepare_data stored from a folder was fitted with; None for others."""
  found = re.search(r'stored at [\dx]+ \((' + '|'.join(ASPECTS) + r')\)', description)
  return found.group(1) if found else None


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
  return training_batches_of(in_memory(ds), batch_size, seed=seed, first_step=first_step)


def training_batches_of(split: Tuple[tf.Tensor, tf.Tensor],
                        batch_size: int,
                        *,
                        seed: int = 0,
                        first_step: int = 0) -> tf.data.Dataset:
  """`training_batches` of a split already in memory: (uint8 images, int64 labels)."""
  images, labels = split
  size = int(labels.shape[0])

  def example(n: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    position = streaming.permuted_index(n, size, seed)
    return tf.gather(images, position), tf.gather(labels, position)

  stream = tf.data.Dataset.range(first_step * batch_size, tf.int64.max)
  stream = stream.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return _distributable(stream.batch(batch_size, drop_remainder=True))


def stream_batches(stream: streaming.Stream,
                   batch_size: int,
                   *,
                   seed: int = 0,
                   first_step: int = 0,
                   context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
  """`training_batches` for a split read from its files (trainer/streaming.py says which
  order); under a distribution strategy's `context`, this worker's per-replica batches."""
  if context is None:
    examples = stream.examples(seed, first_step * batch_size)
    return _distributable(examples.batch(batch_size, drop_remainder=True))
  workers, worker = context.num_input_pipelines, context.input_pipeline_id
  per_worker = batch_size // workers
  examples = stream.examples(seed, first_step * per_worker, workers, worker, per_worker)
  batches = examples.batch(context.get_per_replica_batch_size(batch_size), drop_remainder=True)
  options = tf.data.Options()
  # The stream holds this worker's share already.
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
  options.deterministic = True
  return batches.with_options(options).prefetch(tf.data.AUTOTUNE)


def evaluation_batches(ds: tf.data.Dataset,
                       batch_size: int,
                       max_batches: int = 0) -> tf.data.Dataset:
  """`ds` in order, in batches (the last one partial); only the first `max_batches` if set.

  A dataset of known length: `fit` and `evaluate` take its cardinality as their steps.
  """
  return _ordered_batches(tf.data.Dataset.from_tensor_slices(in_memory(ds)), batch_size,
                          max_batches)


def _ordered_batches(ds, batch_size, max_batches):
  batches = ds.batch(batch_size)
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
