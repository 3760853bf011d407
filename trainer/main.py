"""Fine-tunes an ImageNet-pretrained DenseNet121 on MNIST (or another small image dataset).

  python -m trainer.main --adapter=rgb
  python -m trainer.main --flagfile=configs/mnist_conv.cfg --num_gpus=2
  tensorboard --logdir runs

This module only reads and checks flags; trainer/train.py does the work.
"""
import sys

from absl import flags

from trainer import cli, data, distribution, runs, train, weights
from trainer.errors import UserError
from trainer.model import ADAPTERS, HEADS, INTERPOLATIONS, MIN_IMAGE_SIZE, ModelConfig

# ---- Data
flags.DEFINE_string('dataset', 'mnist', 'A tensorflow-datasets image-classification name '
                    '(mnist, fashion_mnist, cifar10, ...), idx:DIR for MNIST-format IDX files, '
                    'or synthetic.')
flags.DEFINE_string('data_dir', None, "tensorflow-datasets' data folder (default ~/tensorflow_datasets).")
flags.DEFINE_bool('download', True, 'Download and prepare the dataset if --data_dir lacks it.')
flags.DEFINE_float('validation_split', 0.2, 'The last fraction of the train split held out '
                   'for validation.', lower_bound=0.01, upper_bound=0.5)
# ---- Model
flags.DEFINE_enum('adapter', 'rgb', ADAPTERS, 'rgb: copy gray to three channels; conv: a learned '
                  'Conv2D(3)+BatchNorm+ReLU stem.')
flags.DEFINE_integer('image_size', 64, 'Side the images are resized to inside the model.',
                     lower_bound=MIN_IMAGE_SIZE)
flags.DEFINE_enum('interpolation', 'bicubic', INTERPOLATIONS, 'Resize method.')
flags.DEFINE_enum('head', 'gap', HEADS, 'gap: global average pooling; flatten: as the article.')
flags.DEFINE_float('dropout', 0.0, 'Dropout before the classifier.', lower_bound=0.0,
                   upper_bound=0.9)
flags.DEFINE_string('weights', 'imagenet', 'Backbone start: imagenet, none, or a .h5 file.')
flags.DEFINE_bool('augment', False, 'Random rotation, zoom and shift in training.')
flags.DEFINE_float('rotation_degrees', 10.0, 'Largest random rotation.', lower_bound=0.0)
flags.DEFINE_float('zoom', 0.1, 'Largest random zoom in or out, as a fraction.', lower_bound=0.0,
                   upper_bound=0.9)
flags.DEFINE_float('translate', 0.1, 'Largest random shift, as a fraction of the side.',
                   lower_bound=0.0, upper_bound=0.9)
# ---- Training
flags.DEFINE_enum('train_mode', 'finetune', train.TRAIN_MODES, 'finetune: every layer trains; '
                  'transfer: the backbone is frozen; two_stage: frozen, then fine-tuned.')
flags.DEFINE_integer('epochs', 10, 'Epochs in all.', lower_bound=1)
flags.DEFINE_integer('frozen_epochs', 2, 'two_stage: epochs with the backbone frozen.',
                     lower_bound=1)
flags.DEFINE_integer('batch_size', 128, 'Global batch size, split across replicas.',
                     lower_bound=1)
flags.DEFINE_float('learning_rate', 1e-3, 'Peak Adam rate for a global batch of '
                   f'{train.REFERENCE_BATCH_SIZE}; scaled linearly with --batch_size.',
                   lower_bound=0.0)
flags.DEFINE_float('unfrozen_learning_rate', 1e-4, 'two_stage: the peak rate once the backbone '
                   'is unfrozen (same scaling).', lower_bound=0.0)
flags.DEFINE_float('warmup_epochs', 1.0, 'Linear warmup before the cosine decay.', lower_bound=0.0)
flags.DEFINE_float('label_smoothing', 0.0, 'Label smoothing of the loss.', lower_bound=0.0,
                   upper_bound=0.5)
flags.DEFINE_integer('steps_per_epoch', 0, 'Steps per epoch; 0 for a full pass.', lower_bound=0)
flags.DEFINE_integer('eval_steps', 0, 'Batches of validation and test data; 0 for all.',
                     lower_bound=0)
flags.DEFINE_integer('seed', 0, 'Seed of the shuffle, the augmentation and the new layers.')
# ---- Outputs
flags.DEFINE_string('run_dir', None, 'Run folder (default runs/<run_name>); an existing one is '
                    'resumed.')
flags.DEFINE_string('run_name', '', 'Name of the run folder under runs/ (default: the start time).')
flags.DEFINE_bool('export', True, 'Export a SavedModel that takes raw images at the end.')
flags.DEFINE_string('profile_steps', '', "Training steps to trace for TensorBoard's Profile tab: "
                    'N, or FIRST,LAST (e.g. 10,12); each stage traces its own. Empty: none.')
# ---- Hardware
flags.DEFINE_integer('num_gpus', 0, 'GPUs per machine: 0 CPU, 1 one GPU, N MirroredStrategy.',
                     lower_bound=0)
flags.DEFINE_enum('precision', 'auto', distribution.PRECISIONS, 'auto: mixed_float16 on GPUs '
                  'with tensor cores, else float32.')
flags.DEFINE_integer('collective_timeout', 600, 'Multi-worker: seconds before a lost worker '
                     'stops the others with an error.', lower_bound=1)

flags.register_multi_flags_validator(
    ['train_mode', 'frozen_epochs', 'epochs'],
    lambda f: f['train_mode'] != 'two_stage' or f['frozen_epochs'] < f['epochs'],
    message='--frozen_epochs must be below --epochs for --train_mode=two_stage; '
            'lower --frozen_epochs or raise --epochs')


def _is_step_range(text):
  """'' (none), 'N' or 'FIRST,LAST' with 1 <= FIRST <= LAST: what keras' profile_batch takes."""
  if not text:
    return True
  steps = text.split(',')
  if len(steps) > 2 or not all(step.strip().isdigit() for step in steps):
    return False
  return 1 <= int(steps[0]) <= int(steps[-1])


flags.register_validator('profile_steps', _is_step_range,
                         message='--profile_steps must be N or FIRST,LAST with 1 <= FIRST <= LAST '
                                 '(e.g. 10,12), or empty for no profile')

FLAGS = flags.FLAGS


def config_from_flags() -> train.TrainConfig:
  return train.TrainConfig(
      run_dir=FLAGS.run_dir or runs.default_run_dir(FLAGS.run_name),
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, download=FLAGS.download,
      validation_split=FLAGS.validation_split,
      model=ModelConfig(
          image_size=FLAGS.image_size, adapter=FLAGS.adapter, head=FLAGS.head,
          dropout=FLAGS.dropout, interpolation=FLAGS.interpolation, augment=FLAGS.augment,
          rotation_degrees=FLAGS.rotation_degrees, zoom=FLAGS.zoom, translate=FLAGS.translate,
          seed=FLAGS.seed),
      weights=FLAGS.weights, train_mode=FLAGS.train_mode, epochs=FLAGS.epochs,
      frozen_epochs=FLAGS.frozen_epochs, batch_size=FLAGS.batch_size,
      learning_rate=FLAGS.learning_rate, unfrozen_learning_rate=FLAGS.unfrozen_learning_rate,
      warmup_epochs=FLAGS.warmup_epochs, label_smoothing=FLAGS.label_smoothing,
      steps_per_epoch=FLAGS.steps_per_epoch, eval_steps=FLAGS.eval_steps, seed=FLAGS.seed,
      export=FLAGS.export, profile_steps=FLAGS.profile_steps)


def resolved_flags_text() -> str:
  """This module's flags as a flagfile, so `--flagfile=runs/X/flags.cfg` repeats the run."""
  return ''.join(f.serialize() + '\n' for f in FLAGS.get_flags_for_module(sys.modules[__name__]))


def run(splits_override=None, strategy_override=None) -> dict:
  """Trains as the flags say; tests inject small datasets and strategies."""
  distribution.check_shared_run_dir(bool(FLAGS.run_dir or FLAGS.run_name))
  config = config_from_flags()
  # The strategy comes first: it fixes which devices TensorFlow initialises.
  strategy = strategy_override or distribution.make_strategy(FLAGS.num_gpus,
                                                             FLAGS.collective_timeout)
  distribution.set_precision(distribution.resolve_precision(FLAGS.precision, FLAGS.num_gpus))
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise UserError(f'--batch_size={config.batch_size} does not split evenly over {replicas} '
                    f'replicas; use a multiple of {replicas}')
  runs.claim(config, resolved_flags_text(), chief=distribution.is_chief(strategy))
  # Before the data: missing weights should fail in seconds, not after a dataset download.
  weights_path = weights.resolve(config.weights)
  splits = splits_override or data.load_splits(config.dataset, config.data_dir,
                                               config.validation_split, config.download)
  with distribution.lost_workers_as_user_errors():
    return train.train_and_evaluate(config, splits, strategy, weights_path)


def main(argv):
  if len(argv) > 1:
    raise UserError(f'unexpected arguments {argv[1:]}; every setting is a --flag (see --help)')
  run()


if __name__ == '__main__':
  cli.run(main)
