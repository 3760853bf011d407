"""What `fit` does at each epoch's end, and what TensorBoard shows beyond Keras's scalars.

At an epoch's end the callbacks run in the order `training_callbacks` gives; the
order matters when a run is killed between two of them (see there).
"""
import dataclasses
import math
import os
import time
from typing import List, Optional

import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from trainer import data, runs
from trainer.config import TrainConfig
from trainer.errors import UserError
from trainer.keras_lib import keras
from trainer.model import preprocessing_model, stop_augmentation, without_augmentation

NUM_LOGGED_IMAGES = 8


def training_callbacks(config: TrainConfig, out_dir: str, stage_name: str, backbone_trainable: bool,
                       steps_per_epoch: int, best_so_far: Optional[float],
                       splits: data.Splits) -> List[keras.callbacks.Callback]:
  """`out_dir` is the run folder on the chief, a throwaway folder on other workers;
  the training split of `splits` feeds the BatchNorm recalibration."""
  recalibration = min(config.recalibrate_batchnorm, steps_per_epoch)
  # Batched only when recalibration is on: the stream holds its own copy of the split.
  recalibrate = [
      RecalibrateBatchNorm(splits.training_batches(config.batch_size, seed=config.seed),
                           recalibration)
  ] if recalibration else []
  unaugmented_epochs = unaugmented_epoch_count(config)
  unaugmented = [StopAugmentation(config.epochs - unaugmented_epochs)
                ] if config.model.augment and unaugmented_epochs else []
  return [
      EpochScalars(backbone_trainable),  # first: it adds to the logs the others write
      # Before anything is written for an epoch that cannot be trusted.
      StopOnBadEpoch(),
      keras.callbacks.ModelCheckpoint(
          runs.path(out_dir, runs.BEST_CHECKPOINT),
          monitor='val_accuracy',
          mode='max',
          save_best_only=True,
          save_weights_only=True,
          # A resumed run must beat what it already saved, never overwrite a better checkpoint.
          # So the checkpoint comes before the history that this threshold is read from.
          initial_value_threshold=best_so_far),
      keras.callbacks.CSVLogger(runs.path(out_dir, runs.HISTORY_FILE), append=True),
      keras.callbacks.TensorBoard(runs.log_dir(out_dir),
                                  update_freq='epoch',
                                  profile_batch=config.profile_steps or 0),
      Throughput(runs.log_dir(out_dir), config.batch_size * steps_per_epoch),
      # Preemption: a restarted run resumes this stage after its last backed-up epoch. Last,
      # so that an epoch counts as done only once its checkpoint and history are written
      # (a resumed run trims history rows of epochs the backup did not record).
      keras.callbacks.BackupAndRestore(runs.backup_dir(config.run_dir, stage_name)),
      # Acts as validation begins, not at the epoch's end: its place here does not matter.
      *recalibrate,
      # Acts as an epoch begins.
      *unaugmented,
  ]


class EpochScalars(keras.callbacks.Callback):
  """Adds the learning rate and the backbone's state to each epoch's logs and history."""

  def __init__(self, backbone_trainable: bool):
    super().__init__()
    self.backbone_trainable = backbone_trainable

  def on_epoch_end(self, epoch, logs=None):
    optimizer = self.model.optimizer
    schedule = optimizer.learning_rate
    # get_value, not float(): under a distribution strategy the rate is a MirroredVariable.
    logs['learning_rate'] = float(
        keras.backend.get_value(schedule(optimizer.iterations) if callable(schedule) else schedule))
    logs['backbone_trainable'] = float(self.backbone_trainable)


class Throughput(keras.callbacks.Callback):
  """Examples per second of each epoch, in TensorBoard only: history.csv stays a pure
  function of the settings, so two --deterministic runs write the same file."""

  def __init__(self, log_dir: str, examples_per_epoch: int):
    super().__init__()
    self.writer = tf.summary.create_file_writer(os.path.join(log_dir, 'train'))
    self.examples_per_epoch = examples_per_epoch
    self.epoch_start = 0.0

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch_start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    rate = self.examples_per_epoch / (time.perf_counter() - self.epoch_start)
    with self.writer.as_default():
      tf.summary.scalar('epoch_examples_per_second', rate, step=epoch)
    self.writer.flush()


class RecalibrateBatchNorm(keras.callbacks.Callback):
  """Before each validation, sets every BatchNorm layer's moving mean and variance to the
  average of its batch statistics over the first `num_batches` of `batches` ("precise BN").

  Training leaves moving averages of augmented batches, partly from weights that have
  moved on since; validation and the test see un-augmented digits through the current
  weights. The same batches every time, so a resumed run recalibrates as an uninterrupted
  one does. Layers in inference mode (a frozen backbone, --freeze_batchnorm) keep theirs.
  """

  def __init__(self, batches: tf.data.Dataset, num_batches: int):
    super().__init__()
    self.batches = batches.map(lambda images, labels: images)
    self.num_batches = num_batches
    self.step = None

  def on_test_begin(self, logs=None):
    layers = [
        layer for layer in self.model.submodules
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    statistics = [v for layer in layers for v in (layer.moving_mean, layer.moving_variance)]
    momenta = [layer.momentum for layer in layers]
    # Momentum 0: each step leaves one batch's statistics behind, and the loop averages them.
    for layer in layers:
      layer.momentum = 0.0
    try:
      averages = self._average_batch_statistics(statistics)
    finally:
      for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    for variable, average in zip(statistics, averages):
      variable.assign(average)

  def _average_batch_statistics(self, statistics):
    strategy = self.model.distribute_strategy
    if self.step is None:  # traced once a stage, while the momenta are 0
      plain = without_augmentation(self.model)

      @tf.function
      def step(images):
        strategy.run(lambda x: plain(x, training=True), args=(images,))
        return [v.read_value() for v in statistics]

      self.step = step
    batches = iter(strategy.experimental_distribute_dataset(self.batches))
    totals = [tf.zeros_like(v) for v in statistics]
    for _ in range(self.num_batches):
      totals = [total + value for total, value in zip(totals, self.step(next(batches)))]
    return [total / self.num_batches for total in totals]


def unaugmented_epoch_count(config: TrainConfig) -> int:
  # Rounded after a few decimals, so that 0.3 of 10 epochs is 3, not 2.9999999999999996.
  return math.floor(round(config.unaugmented_fraction * config.epochs, 6))


class StopAugmentation(keras.callbacks.Callback):
  """From epoch `first_epoch` (0-based) on, training sees un-augmented images.

  Rotated, zoomed and shifted digits are resampled, so they are blurred and placed as
  validation and test digits never are; epochs on plain digits at the schedule's low tail
  leave the weights fitted to what they will be evaluated on.
  """

  def __init__(self, first_epoch: int):
    super().__init__()
    self.first_epoch = first_epoch

  def on_epoch_begin(self, epoch, logs=None):
    if epoch >= self.first_epoch and stop_augmentation(self.model):
      # fit calls model.train_function at each step; the one it made has the augmentation.
      self.model.train_function = self.model.make_train_function(force=True)


class StopOnBadEpoch(keras.callbacks.Callback):
  """Ends training with one line at the first non-finite loss, or at an epoch without
  validation metrics, before a checkpoint or the history records it."""

  def __init__(self) -> None:
    super().__init__()
    self.epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    loss = (logs or {}).get('loss')
    if loss is not None and not math.isfinite(loss):
      raise UserError(f'the training loss became {loss} at epoch {self.epoch + 1}, step '
                      f'{batch + 1}: training diverged; start a new run with a lower '
                      '--learning_rate (the checkpoints of earlier epochs are kept)')

  def on_epoch_end(self, epoch, logs=None):
    if 'val_accuracy' not in (logs or {}):
      raise UserError(f'epoch {epoch + 1} ended without validation metrics, so its '
                      'checkpoint could not be chosen; check that the validation split is not '
                      'empty (--validation_split, --eval_steps)')


def log_hparams(log_dir: str, config: TrainConfig, metrics: dict, precision: str,
                replicas: int) -> None:
  """The run's settings and test metrics for the HParams dashboard, so runs compare side by side."""
  settings = {
      **dataclasses.asdict(config),
      **dataclasses.asdict(config.model),
      **dataclasses.asdict(config.source), 'precision': precision,
      'replicas': replicas
  }
  # HParams takes only bool, int, float and str values; the paths say nothing about the result.
  hparams = {
      name: value
      for name, value in settings.items()
      if isinstance(value, (bool, int, float, str)) and name not in ('run_dir', 'data_dir')
  }
  with tf.summary.create_file_writer(log_dir).as_default():
    hparams_api.hparams(hparams, trial_id=os.path.basename(os.path.normpath(config.run_dir)))
    for name, value in metrics.items():
      tf.summary.scalar(name, value, step=config.epochs)


def log_preprocessed_images(model: keras.Model, dataset: tf.data.Dataset, log_dir: str) -> None:
  """The first images of the unbatched `dataset` as the backbone receives them, rescaled
  per image to [0, 1] for display."""
  images, _ = next(iter(dataset.take(NUM_LOGGED_IMAGES).batch(NUM_LOGGED_IMAGES)))
  seen = preprocessing_model(model)(images, training=False)
  low = tf.reduce_min(seen, axis=[1, 2, 3], keepdims=True)
  high = tf.reduce_max(seen, axis=[1, 2, 3], keepdims=True)
  with tf.summary.create_file_writer(os.path.join(log_dir, 'train')).as_default():
    tf.summary.image('preprocessed_inputs', (seen - low) / (high - low + 1e-6),
                     step=0,
                     max_outputs=NUM_LOGGED_IMAGES)
