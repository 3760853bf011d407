"""Downloads and verifies DenseNet121's ImageNet weights (the notop file), then prints where it is.

  python -m trainer.fetch_weights                     # into Keras's cache, where training looks
  python -m trainer.fetch_weights --cache_dir=DIR     # to copy to machines without a network

On a machine without a network, copy DIR/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5
into $KERAS_HOME/models/ (default ~/.keras/models/), or pass the file with --weights=PATH.
A file that is already there and whose checksum matches is not downloaded again.
"""
# First: trainer.cli sets TensorFlow's environment, which TensorFlow reads as it loads.
from trainer import cli  # isort: skip

from typing import List

from absl import flags

from trainer import weights

flags.DEFINE_string(
    'cache_dir', None, 'Folder to put the weights file in (default: Keras\'s '
    'cache, $KERAS_HOME/models or ~/.keras/models).')

FLAGS = flags.FLAGS


def main(_: List[str]) -> None:
  path = weights.imagenet_file(FLAGS.cache_dir or weights.keras_cache_dir())
  print(path)


def entry_point() -> None:
  """The console script (see setup.cfg); python -m trainer.fetch_weights runs it too."""
  cli.run(main)


if __name__ == '__main__':
  entry_point()
