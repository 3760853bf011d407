"""Prepares a tensorflow-datasets dataset once, so that training machines read it with no network.

  # On a machine with a network: download and prepare, then copy DIR to the training machines.
  python -m trainer.prepare_data --dataset=mnist --data_dir=DIR
  # With no network at all: build the same dataset from local MNIST-format IDX files.
  python -m trainer.prepare_data --dataset=fashion_mnist --from_idx=IDX_DIR --data_dir=DIR
  # Either way, training then reads DIR as if tfds had downloaded it there:
  python -m trainer.main --dataset=mnist --data_dir=DIR --nodownload

--from_idx writes the dataset under the name, version and features of tfds's own
builder, and its examples under the keys tfds's own build gives them (so tfds
shuffles them into the same order): tfds.builder(NAME, data_dir=DIR) finds it prepared.
"""
# First: trainer.cli sets TensorFlow's environment, which TensorFlow reads as it loads.
from trainer import cli  # isort: skip

from typing import List, Optional

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags

from trainer import data, idx
from trainer.config import TrainConfig
from trainer.errors import UserError

# Training's own flags, so both commands read them the same way.
cli.define_flags(TrainConfig, __name__, names=['dataset', 'data_dir', 'download'])
flags.DEFINE_string(
    'from_idx', None, 'Build the dataset from the MNIST-format IDX files in this '
    'folder (train-images-idx3-ubyte[.gz] and the three others) instead of '
    'downloading it.')

FLAGS = flags.FLAGS
PNG_BATCH = 1000  # images PNG-encoded per tf.data step


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


def main(_: List[str]) -> None:
  if FLAGS.dataset == data.SYNTHETIC or FLAGS.dataset.startswith(data.IDX_PREFIX):
    raise UserError(f'--dataset={FLAGS.dataset} needs no preparing; give a tensorflow-datasets '
                    'name such as mnist')
  path = prepare(FLAGS.dataset, FLAGS.data_dir, FLAGS.from_idx, FLAGS.download)
  print(f'Prepared {FLAGS.dataset} in {path}')
  data_dir_flag = f' --data_dir={FLAGS.data_dir}' if FLAGS.data_dir else ''
  print(f'Train on it with: python -m trainer.main --dataset={FLAGS.dataset}{data_dir_flag} '
        '--nodownload')


def entry_point() -> None:
  """The console script (see setup.cfg); python -m trainer.prepare_data runs it too."""
  cli.run(main)


if __name__ == '__main__':
  entry_point()
