"""The settings of a run: one dataclass field per setting, with its default, help and bounds.

This is the one place a setting is written down. trainer/cli.py turns the fields into
absl flags (`--image_size`, `--epochs`, ...), and a run folder's config.json is these
dataclasses as JSON. Everything else takes plain values from a config.
"""
import dataclasses
import typing
from typing import Any, Optional, Tuple

ADAPTERS = ('rgb', 'conv')
HEADS = ('gap', 'flatten')
STEM_INITS = ('copy', 'random')
INTERPOLATIONS = ('bicubic', 'bilinear', 'nearest', 'area')
TRAIN_MODES = ('finetune', 'transfer', 'two_stage')
PRECISIONS = ('auto', 'float32', 'mixed_float16', 'mixed_bfloat16')
TFLITE_CHOICES = ('none', 'float32', 'dynamic_range')
CHANNELS = ('auto', '1', '3')
ASPECTS = ('crop', 'pad')  # trainer/images.py implements them
MIN_IMAGE_SIZE = 32  # the smallest input keras.applications' DenseNet121 accepts
# DenseNet121's activations grow with the pixels: at 1024x1024 one image's pass holds
# gigabytes, where fine-tuning is usually done at 224 to 512.
MAX_IMAGE_SIZE = 1024
# --learning_rate is the peak rate for this global batch; it scales linearly with the batch.
REFERENCE_BATCH_SIZE = 256


def setting(default: Any,
            help_text: str,
            *,
            lower: Optional[float] = None,
            upper: Optional[float] = None,
            choices: Optional[Tuple[str, ...]] = None) -> Any:
  """A dataclass field that is also a command-line flag; see cli.define_flags."""
  return dataclasses.field(default=default,
                           metadata={
                               'help': help_text,
                               'lower': lower,
                               'upper': upper,
                               'choices': choices
                           })


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  image_size: int = setting(64, 'Side the images are resized to inside the model. Images of '
                            'varying size (folders, tf_flowers) are stored at this side on the '
                            'host already.',
                            lower=MIN_IMAGE_SIZE,
                            upper=MAX_IMAGE_SIZE)
  adapter: str = setting('rgb', 'rgb: copy gray to three channels; conv: a learned '
                         'Conv2D(3)+BatchNorm+ReLU stem.',
                         choices=ADAPTERS)
  # copy: from a random start on real MNIST it raised conv's validation accuracy at seed 0 and
  # its mean over two seeds (benchmarks/RESULTS.md, fifth round).
  stem_init: str = setting(
      'copy', "conv adapter: copy: the stem's convolution starts by passing the image's "
      'channels through (gray copied to all three, as the rgb adapter copies it); random: '
      'Keras\'s default draw.',
      choices=STEM_INITS)
  head: str = setting('gap', 'gap: global average pooling; flatten: as the article.', choices=HEADS)
  dropout: float = setting(0.0, 'Dropout before the classifier.', lower=0.0, upper=0.9)
  # 0.9, not Keras's 0.99: at small budgets 0.99 left the statistics so far behind the
  # weights that evaluation sat near chance (benchmarks/RESULTS.md, recipe against script).
  batchnorm_momentum: float = setting(0.9, "Momentum of the backbone's BatchNorm moving "
                                      'statistics (Keras: 0.99); lower follows fast-moving '
                                      'weights sooner.',
                                      lower=0.0,
                                      upper=0.999)
  freeze_batchnorm: bool = setting(
      False, "Keep the backbone's BatchNorm layers in inference mode while it trains (the "
      "Keras fine-tuning guide's choice): the start's statistics stay as they are. Needs a "
      'pretrained start.')
  interpolation: str = setting('bicubic', 'Resize method.', choices=INTERPOLATIONS)
  augment: bool = setting(False, 'Random rotation, zoom and shift in training.')
  rotation_degrees: float = setting(10.0, 'Largest random rotation.', lower=0.0, upper=180.0)
  zoom: float = setting(0.1, 'Largest random zoom in or out, as a fraction.', lower=0.0, upper=0.9)
  translate: float = setting(0.1,
                             'Largest random shift, as a fraction of the side.',
                             lower=0.0,
                             upper=0.9)


@dataclasses.dataclass(frozen=True)
class SourceConfig:
  """How the files of a folder (--dataset=folder:DIR), or a tfds dataset whose images vary in
  size, become stored images and three splits. Fixed-size datasets are stored as they are."""
  channels: str = setting(
      'auto', 'Folders and varying-size datasets: store the images gray (1) or RGB (3); auto: '
      'what most of a folder\'s images are (gray, with or without alpha, or colour), or a '
      'tfds dataset\'s own channels.',
      choices=CHANNELS)
  # crop: the ImageNet-pretrained backbone learnt from centred crops of photos, which fill
  # the frame; padding shrinks the subject and adds bars it never saw.
  aspect: str = setting(
      'crop', 'Folders and varying-size datasets: make each image square before it is '
      "resized to --image_size. crop: the largest centred square (Keras's "
      'crop_to_aspect_ratio); pad: all of the image, scaled to fit and padded with its '
      "border's colour (as trainer.predict pads).",
      choices=ASPECTS)
  test_fraction: float = setting(0.1, 'The share of each class held out as the test split when '
                                 'the data has none (folder:DIR without DIR/test/, a tfds '
                                 'dataset without a test split).',
                                 lower=0.01,
                                 upper=0.5)
  skip_unreadable: bool = setting(
      False, "Train without the files of a folder that are not readable images (they are "
      'listed and counted) instead of refusing to start.')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything `python -m trainer.main` does; the flags of the same names set it."""
  # ---- Data
  dataset: str = setting(
      'mnist', 'A tensorflow-datasets image-classification name (mnist, '
      'fashion_mnist, cifar10, tf_flowers, ..., or one prepare_data wrote), folder:DIR for a '
      'folder of images in class subfolders (docs/own_images.md), idx:DIR for MNIST-format '
      'IDX files, or synthetic.')
  data_dir: Optional[str] = setting(
      None, "tensorflow-datasets' data folder (default "
      '~/tensorflow_datasets).')
  download: bool = setting(True, 'Download and prepare the dataset if --data_dir lacks it.')
  validation_split: float = setting(0.2, 'The last fraction of the train split held out for '
                                    'validation.',
                                    lower=0.01,
                                    upper=0.5)
  source: SourceConfig = SourceConfig()
  # A quarter by default: the training split, the two others and TensorFlow itself must fit.
  memory_budget_mb: float = setting(
      0.0, 'A split whose uint8 images take more than this many MiB is streamed from its files '
      'instead of being held in host memory; 0: a quarter of the memory of the machine (or '
      'of its container).',
      lower=0.0)
  # ---- Model
  model: ModelConfig = ModelConfig()
  weights: str = setting(
      'imagenet', 'Backbone start: imagenet, none, a .h5 file, or a finished '
      'run folder (its best checkpoint).')
  # ---- Training
  train_mode: str = setting('finetune', 'finetune: every layer trains; transfer: the backbone '
                            'is frozen; two_stage: frozen, then fine-tuned.',
                            choices=TRAIN_MODES)
  epochs: int = setting(10, 'Epochs in all.', lower=1)
  frozen_epochs: int = setting(2, 'two_stage: epochs with the backbone frozen.', lower=1)
  batch_size: int = setting(128, 'Global batch size, split across replicas.', lower=1)
  # 4e-3 (2e-3 at batch 128): the best validation accuracy of 1e-3, 2e-3 and 4e-3 on real MNIST
  # for both adapters, and the rate that ties a plain script at 100 steps (benchmarks/RESULTS.md).
  learning_rate: float = setting(4e-3, 'Peak Adam rate for a global batch of '
                                 f'{REFERENCE_BATCH_SIZE}; scaled linearly with --batch_size.',
                                 lower=0.0)
  unfrozen_learning_rate: float = setting(4e-4, 'two_stage: the peak rate once the backbone is '
                                          'unfrozen (same scaling).',
                                          lower=0.0)
  warmup_epochs: float = setting(1.0, 'Linear warmup before the cosine decay.', lower=0.0)
  label_smoothing: float = setting(0.0, 'Label smoothing of the loss.', lower=0.0, upper=0.5)
  weight_decay: float = setting(0.0, 'Decoupled weight decay (AdamW): each step shrinks the '
                                'weights by this times the learning rate. BatchNorm and biases '
                                'are exempt. 0: plain Adam.',
                                lower=0.0,
                                upper=1.0)
  # A fraction, not a count: the recipe's share holds when --epochs changes.
  unaugmented_fraction: float = setting(
      0.0, 'With --augment, this last fraction of the epochs (rounded down to whole epochs) '
      'trains on un-augmented images, as validation and the test see them; the training step '
      'is traced again once, as they begin.',
      lower=0.0,
      upper=0.9)
  steps_per_epoch: int = setting(0, 'Steps per epoch; 0 for a full pass.', lower=0)
  # On by default: on finished real-MNIST runs it raised validation accuracy without any
  # training (benchmarks/RESULTS.md, BatchNorm recalibration).
  recalibrate_batchnorm: int = setting(
      50, 'Before each validation, recompute the BatchNorm statistics over this many '
      'un-augmented training batches (at most an epoch\'s), so the checkpoint, the test and '
      'the export use them ("precise BN"); 0: keep the moving averages of training.',
      lower=0)
  eval_steps: int = setting(0, 'Batches of validation and test data; 0 for all.', lower=0)
  seed: int = setting(0,
                      'Seed of the shuffle, the augmentation, dropout and the new layers.',
                      lower=0)
  deterministic: bool = setting(
      False, "TensorFlow's op determinism: the same flags on the same "
      'machine give the same history and metrics (slower).')
  # ---- Outputs
  run_dir: str = setting(
      '', 'Run folder (default runs/<run_name>; in a Vertex AI job with an output folder, '
      'BASE/run beside AIP_MODEL_DIR=BASE/model/); an existing one is resumed.')
  run_name: str = setting('', 'Name of the run folder under runs/ (default: the start time).')
  export: bool = setting(True, 'Export a SavedModel that takes raw images at the end.')
  profile_steps: str = setting(
      '', "Training steps to trace for TensorBoard's Profile tab: N, or "
      'FIRST,LAST (e.g. 10,12); each stage traces its own. Empty: none.')
  # ---- Hardware
  num_gpus: int = setting(0, 'GPUs per machine: 0 CPU, 1 one GPU, N MirroredStrategy.', lower=0)
  precision: str = setting('auto', 'auto: mixed_float16 on GPUs with tensor cores, '
                           'mixed_bfloat16 on CPUs with bfloat16 instructions, else float32.',
                           choices=PRECISIONS)
  jit_compile: bool = setting(
      False, 'Compile the training step with XLA: faster on GPUs, a '
      'compile of minutes on CPUs.')
  steps_per_execution: int = setting(1, 'Training steps per call into the compiled step: fewer '
                                     'host round trips on GPUs.',
                                     lower=1)
  collective_timeout: int = setting(600, 'Multi-worker: seconds before a lost worker stops the '
                                    'others with an error.',
                                    lower=1)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """python -m trainer.export's own flags (with --run_dir)."""
  tflite: str = setting(
      'none', 'Also write the model for TensorFlow Lite to RUN/model.tflite: float32, or '
      'dynamic_range (8-bit weights, about 4x smaller; tf.lite.Optimize.DEFAULT).',
      choices=TFLITE_CHOICES)


# These may change between a run and its resumption without changing what it trains.
# memory_budget_mb: a folder's stream is the same in memory and from files; see
# trainer/streaming.py for what a budget that moves a tfds dataset's split changes.
RESUMABLE_CHANGES = ('data_dir', 'download', 'memory_budget_mb', 'export', 'profile_steps',
                     'run_dir', 'run_name', 'num_gpus', 'precision', 'jit_compile',
                     'steps_per_execution', 'collective_timeout')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model trained on a dataset takes in and gives out."""
  image_shape: Tuple[int, int, int]
  num_classes: int
  class_names: Tuple[str, ...]
  # How the host fitted image files to image_shape (--aspect), where it did: folders,
  # varying-size datasets and folders prepare_data stored. None for datasets stored at one
  # size by others (MNIST): a served model then fits files to it as best it can.
  aspect: Optional[str] = None


def scaled_learning_rate(rate: float, batch_size: int) -> float:
  """A rate given for REFERENCE_BATCH_SIZE examples, at a global batch of `batch_size`."""
  return rate * batch_size / REFERENCE_BATCH_SIZE


def train_config_from_dict(fields: dict) -> TrainConfig:
  """The inverse of dataclasses.asdict for TrainConfig, checked as the flags are: a KeyError,
  TypeError or ValueError names a bad field."""
  config = TrainConfig(
      **{
          **fields,
          'model': ModelConfig(**fields['model']),
          # Runs recorded before these settings existed trained as their defaults do.
          'source': SourceConfig(**fields.get('source', {}))
      })
  check_settings(config)
  return config


# What each setting's type admits, and its name in messages.
_KINDS = {
    bool: ((bool,), 'true or false'),
    int: ((int,), 'a whole number'),
    float: ((int, float), 'a number'),
    str: ((str,), 'a string'),
}


def check_settings(config: Any) -> None:
  """Raises ValueError naming the first setting of `config` (a TrainConfig, or a dataclass
  in it) whose type, bounds or choices its flag would refuse."""
  types = typing.get_type_hints(type(config))
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if dataclasses.is_dataclass(field.default):
      check_settings(value)
      continue
    meta, kind = field.metadata, types[field.name]
    allowed, what = _KINDS.get(kind, ((str, type(None)), 'a string'))
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, allowed):
      raise ValueError(f'{field.name}={value!r} is not {what}')
    if meta['choices'] and value not in meta['choices']:
      raise ValueError(f'{field.name}={value!r} is not one of {", ".join(meta["choices"])}')
    if meta['lower'] is not None and value < meta['lower']:
      raise ValueError(f'{field.name}={value!r} is below its least value, {meta["lower"]}')
    if meta['upper'] is not None and value > meta['upper']:
      raise ValueError(f'{field.name}={value!r} is above its largest value, {meta["upper"]}')
