"""Prepares a tensorflow-datasets dataset once, so that training machines read it with no network.

  # On a machine with a network: download and prepare, then copy DIR to the training machines.
  python -m trainer.prepare_data --dataset=mnist --data_dir=DIR
  # With no network at all: build the same dataset from local MNIST-format IDX files.
  python -m trainer.prepare_data --dataset=fashion_mnist --from_idx=IDX_DIR --data_dir=DIR
  # Either way, training then reads DIR as if tfds had downloaded it there:
  python -m trainer.main --dataset=mnist --data_dir=DIR --nodownload
  # A folder of images in class subfolders (docs/own_images.md), stored at --image_size:
  python -m trainer.prepare_data --dataset=folder:PHOTOS --image_size=64 --data_dir=DIR
  python -m trainer.main --dataset=photos --data_dir=DIR --image_size=64 --nodownload

--from_idx writes the dataset under the name, version and features of tfds's own
builder, and its examples under the keys tfds's own build gives them (so tfds
shuffles them into the same order): tfds.builder(NAME, data_dir=DIR) finds it prepared.

A folder becomes a tfds dataset named after it (lower case, `_` for other characters;
`_folder` added to a name tfds has already), with the folder's train, validation and
test splits (trainer/folder.py carves the ones it lacks) and its classes. Its images are
decoded, made square and resized once (trainer/images.py), and stored as PNGs of one
shape: a fixed-size dataset, which trains as MNIST does, from memory or, over the
memory budget, streamed from its TFRecord shards by training machines and workers alike.
"""
# First: trainer.cli sets TensorFlow's environment, which TensorFlow reads as it loads.
from trainer import cli  # isort: skip

import os
import re
from typing import Iterator, List, Optional, Tuple

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags

from trainer import data, folder, idx
from trainer.config import SourceConfig, TrainConfig
from trainer.errors import UserError

# Training's own flags, so both commands read them the same way.
cli.define_flags(TrainConfig,
                 __name__,
                 names=[
                     'dataset', 'data_dir', 'download', 'image_size', 'validation_split',
                     'channels', 'aspect', 'test_fraction', 'skip_unreadable'
                 ])
flags.DEFINE_string(
    'from_idx', None, 'Build the dataset from the MNIST-format IDX files in this '
    'folder (train-images-idx3-ubyte[.gz] and the three others) instead of '
    'downloading it.')

FLAGS = flags.FLAGS
PNG_BATCH = 1000  # images PNG-encoded per tf.data step
FOLDER_VERSION = '1.0.0'
# tfds writes shards of 64 MiB at least (and ignores another minimum given it): MNIST at
# 64x64 would be one file. Shards of about this much uint8 image data (less as PNGs) give
# the streamed reader files to shuffle and the workers of a job files of their own.
FOLDER_SHARD_BYTES = 16 << 20


def prepare(name: str,
            data_dir: Optional[str],
            from_idx: Optional[str] = None,
            download: bool = True) -> str:
  """Prepares dataset `name` in `data_dir` (downloaded, or built from IDX files); returns its folder."""
  if from_idx:
    registered = data.tfds_builder(name, data_dir)
    if not registered.is_prepared():
      build_from_idx(registered, from_idx)
  # Reads it back as training does, so a success here means training will find it.
  return data.prepared_builder(name, data_dir, download=download and not from_idx).data_dir


def build_from_idx(registered: tfds.core.DatasetBuilder, idx_dir: str) -> None:
  """Writes the IDX files in `idx_dir` as tfds's `registered` dataset would be written."""
  _check_idx_shaped(registered)
  train, test = idx.load_idx_dir(idx_dir)
  info = registered.info
  tfds.dataset_builders.store_as_tfds_dataset(
      name=registered.name,
      version=registered.version,
      features=info.features,
      split_datasets={
          'train': _keyed_examples(train),
          'test': _keyed_examples(test)
      },
      data_dir=registered.data_dir_root,
      description=info.description,
      homepage=info.homepage,
      citation=info.citation,
      # Never fetch a prepared copy from GCS: the point is to use the local files.
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def _check_idx_shaped(registered):
  info = data.image_classification_features(registered)
  image_shape, num_classes = info.image_shape, info.num_classes
  if (image_shape, num_classes) != (idx.IMAGE_SHAPE, idx.NUM_CLASSES):
    raise UserError(
        f'--from_idx builds datasets of {idx.NUM_CLASSES} classes of 28x28 gray images (mnist, '
        f'fashion_mnist, kmnist), but {registered.name!r} has {num_classes} classes of '
        f'{image_shape} images; drop --from_idx to download it')


def _keyed_examples(ds):
  """(key, example) pairs with keys 0, 1, ... in file order, as tfds's MNIST builders key them.

  PNG-encoded in tf.data a batch at a time: letting tfds iterate a tf.data dataset and
  encode its 70,000 arrays one by one took 46 s for Fashion-MNIST here, this takes 7 s.
  """
  encoded = ds.map(lambda image, label: (tf.io.encode_png(image), label),
                   num_parallel_calls=tf.data.AUTOTUNE).batch(PNG_BATCH)
  examples = (
      example for pngs, labels in encoded.as_numpy_iterator() for example in zip(pngs, labels))
  for key, (png, label) in enumerate(examples):
    yield key, {'image': png, 'label': label}


# ---- Folders


def prepare_folder(directory: str, data_dir: Optional[str], image_size: int,
                   validation_split: float, source: SourceConfig) -> Tuple[str, str]:
  """Stores the folder as a tfds dataset in `data_dir`; returns its name and its folder.

  A dataset prepared already from the same folder, at the same shape and with the same
  classes, is kept as it is.
  """
  found = folder.read_folder(directory, validation_split, source.test_fraction, source.channels,
                             source.skip_unreadable)
  name = folder_dataset_name(directory)
  shape = (image_size, image_size, found.channels)
  description = f'{_source_line(directory)}, {data.stored_description(shape, source.aspect)}.'
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=shape, encoding_format='png'),
      'label': tfds.features.ClassLabel(names=list(found.class_names)),
  })
  existing = _prepared(name, data_dir)
  if existing is not None:
    _check_same(existing, directory, shape, found.class_names)
    return name, existing.data_dir
  decode = data.stored_image_decoder(found.channels, image_size, source.aspect)
  tfds.dataset_builders.store_as_tfds_dataset(
      name=name,
      version=FOLDER_VERSION,
      features=features,
      split_datasets={
          split_name: _stored_examples(directory, split, decode)
          for split_name, split in found.splits.items()
      },
      data_dir=data_dir,
      description=description,
      download_config=tfds.download.DownloadConfig(try_download_gcs=False,
                                                   num_shards=_num_shards(found, shape)))
  return name, data.prepared_builder(name, data_dir, download=False).data_dir


def _num_shards(found: folder.Folder, shape: Tuple[int, int, int]) -> int:
  """Shards of about FOLDER_SHARD_BYTES of the training images; tfds gives each split as many,
  so no more than the smallest split has images."""
  train_bytes = len(found.splits['train'].paths) * shape[0] * shape[1] * shape[2]
  smallest = min(len(split.paths) for split in found.splits.values())
  return max(1, min(smallest, round(train_bytes / FOLDER_SHARD_BYTES)))


def folder_dataset_name(directory: str) -> str:
  """A tfds name from the folder's own name: 'My Photos' -> my_photos."""
  base = os.path.basename(os.path.normpath(directory))
  name = re.sub(r'[^a-z0-9]+', '_', base.lower()).strip('_')
  if not name or not name[0].isalpha():
    name = f'folder_{name}'.rstrip('_')
  try:
    tfds.builder_cls(name)
  except tfds.core.registered.DatasetNotFoundError:
    return name
  return f'{name}_folder'  # tfds's own dataset of that name would shadow it


def _source_line(directory):
  local = '://' not in directory
  return f'Prepared by trainer.prepare_data from {os.path.abspath(directory) if local else directory}'


def _prepared(name, data_dir):
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    return None
  return builder if builder.is_prepared() else None


def _check_same(builder, directory, shape, class_names):
  features = builder.info.features
  same = (builder.info.description.startswith(_source_line(directory)) and
          tuple(features['image'].shape) == shape and
          tuple(features['label'].names) == tuple(class_names))
  if not same:
    raise UserError(f'{builder.data_dir} holds {builder.name!r} prepared otherwise '
                    f'({builder.info.description.strip()} Classes: '
                    f'{len(features["label"].names)}); delete it to prepare it again, or pass '
                    'another --data_dir')


def _stored_examples(directory: str, split: folder.Split, decode) -> Iterator[tuple]:
  """(key, example) pairs: the path in the folder, and the image stored as a PNG.

  Decoded, resized and PNG-encoded in tf.data, in parallel: tfds would encode the arrays
  one by one.
  """
  files = tf.data.Dataset.from_tensor_slices((list(split.paths), list(split.labels)))
  encoded = files.map(lambda path, label: (tf.io.encode_png(decode(tf.io.read_file(path))), label),
                      num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=True).batch(PNG_BATCH)
  paths = iter(split.paths)
  for pngs, labels in encoded.as_numpy_iterator():
    for png, label in zip(pngs, labels):
      yield os.path.relpath(next(paths), directory), {'image': png, 'label': label}


def main(_: List[str]) -> None:
  if FLAGS.dataset.startswith(data.FOLDER_PREFIX):
    _prepare_folder_command(FLAGS.dataset[len(data.FOLDER_PREFIX):])
    return
  if FLAGS.dataset == data.SYNTHETIC or FLAGS.dataset.startswith(data.IDX_PREFIX):
    raise UserError(f'--dataset={FLAGS.dataset} needs no preparing; give a tensorflow-datasets '
                    'name such as mnist, or folder:DIR')
  path = prepare(FLAGS.dataset, FLAGS.data_dir, FLAGS.from_idx, FLAGS.download)
  print(f'Prepared {FLAGS.dataset} in {path}')
  print(f'Train on it with: python -m trainer.main --dataset={FLAGS.dataset}{_data_dir_flag()} '
        '--nodownload')


def _prepare_folder_command(directory):
  if FLAGS.from_idx:
    raise UserError('--from_idx builds MNIST-shaped datasets from IDX files; drop it to prepare '
                    f'folder:{directory}')
  source = cli.config_from_flags(SourceConfig)
  name, path = prepare_folder(directory, FLAGS.data_dir, FLAGS.image_size, FLAGS.validation_split,
                              source)
  print(f'Prepared folder:{directory} as {name} in {path}')
  print(f'Train on it with: python -m trainer.main --dataset={name}{_data_dir_flag()} '
        f'--image_size={FLAGS.image_size} --nodownload')


def _data_dir_flag():
  return f' --data_dir={FLAGS.data_dir}' if FLAGS.data_dir else ''


def entry_point() -> None:
  """The console script (see setup.cfg); python -m trainer.prepare_data runs it too."""
  cli.run(main)


if __name__ == '__main__':
  entry_point()
