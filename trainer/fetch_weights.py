"""Downloads and verifies DenseNet121's ImageNet weights (the notop file), then prints where it is.

  python -m trainer.fetch_weights                     # into Keras's cache, where training looks
  python -m trainer.fetch_weights --cache_dir=DIR     # to copy to machines without a network

On a machine without a network, copy DIR/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5
into $KERAS_HOME/models/ (default ~/.keras/models/), or pass the file with --weights=PATH.
A file that is already there and whose checksum matches is not downloaded again.
"""
from absl import flags

from trainer import cli, weights
from trainer.errors import UserError

flags.DEFINE_string('cache_dir', None, 'Folder to put the weights file in (default: Keras\'s '
                    'cache, $KERAS_HOME/models or ~/.keras/models).')

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise UserError(f'unexpected arguments {argv[1:]}; the only setting is --cache_dir')
  path = weights.imagenet_file(FLAGS.cache_dir or weights.keras_cache_dir())
  print(path)


if __name__ == '__main__':
  cli.run(main)
