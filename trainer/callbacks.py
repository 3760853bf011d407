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
from trainer.config import TrainConfig, scaled_learning_rate
from trainer.errors import UserError
from trainer.keras_lib import keras
from trainer.model import preprocessing_model, stop_augmentation, without_augmentation

NUM_LOGGED_IMAGES = 8


def training_callbacks(config: TrainConfig, out_dir: str, stage_name: str, backbone_trainable: bool,
                       schedule: keras.optimizers.schedules.LearningRateSchedule,
                       steps_per_epoch: int, splits: data.Splits,
                       settings_text: str) -> List[keras.callbacks.Callback]:
  """Those of one stage. `out_dir` is the run folder on the chief, a throwaway folder on
  other workers; the training split of `splits` feeds the BatchNorm recalibration;
  `settings_text` is what flags.cfg records."""
  recalibration = min(config.recalibrate_batchnorm, steps_per_epoch)
  # The same split in memory as fit's stream (Splits reads it once), from its first step.
  recalibrate = [
      RecalibrateBatchNorm(splits.training_batches(config.batch_size, seed=config.seed),
                           recalibration)
  ] if recalibration else []
  unaugmented_epochs = unaugmented_epoch_count(config)
  unaugmented = [StopAugmentation(config.epochs - unaugmented_epochs)
                ] if config.model.augment and unaugmented_epochs else []
  return [
      EpochScalars(schedule, backbone_trainable),  # first: it adds to the logs the others write
      # Before anything is written for an epoch that cannot be trusted.
      StopOnBadEpoch(),
      # Before the history: a resumed run compares new epochs with the accuracy saved in it.
      BestCheckpoint(out_dir, runs.best_validation_accuracy(config.run_dir)),
      keras.callbacks.CSVLogger(runs.path(out_dir, runs.HISTORY_FILE), append=True),
      keras.callbacks.TensorBoard(runs.log_dir(out_dir),
                                  update_freq='epoch',
                                  profile_batch=config.profile_steps or 0),
      Throughput(runs.log_dir(out_dir), config.batch_size * steps_per_epoch),
      # Last: an epoch counts as finished, and is not trained again by a resumed run, only
      # once everything above is written for it (a resumed run trims the history rows of
      # epochs after its checkpoint). The checkpoint of a stage's last epoch marks the
      # stage finished, so no moment between two epochs or two stages loses one.
      EpochCheckpoint(out_dir, stage_name),
      # Once, after the first training step: a start that fails before it leaves no
      # settings that would refuse the corrected command.
      RecordSettings(out_dir, config, settings_text),
      # Acts as validation begins, not at the epoch's end: its place here does not matter.
      *recalibrate,
      # Acts as an epoch begins.
      *unaugmented,
  ]


class EpochScalars(keras.callbacks.Callback):
  """Adds the learning rate and the backbone's state to each epoch's logs and history.

  The rate is the stage's schedule at the optimizer's step count when the epoch ends (the
  rate of the next step), the definition Keras's TensorBoard callback logs as
  epoch_learning_rate, so history.csv and TensorBoard agree.
  """

  def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule,
               backbone_trainable: bool):
    super().__init__()
    self.schedule = schedule
    self.backbone_trainable = backbone_trainable

  def on_epoch_end(self, epoch, logs=None):
    rate = self.schedule(self.model.optimizer.iterations)
    # get_value, not float(): under a distribution strategy the step is a MirroredVariable.
    logs['learning_rate'] = float(keras.backend.get_value(rate))
    logs['backbone_trainable'] = float(self.backbone_trainable)


class BestCheckpoint(keras.callbacks.Callback):
  """Saves the weights of each epoch whose validation accuracy beats the best so far."""

  def __init__(self, out_dir: str, best_so_far: Optional[float]):
    super().__init__()
    self.out_dir = out_dir
    self.best = best_so_far

  def on_epoch_end(self, epoch, logs=None):
    accuracy = float(logs['val_accuracy'])
    if self.best is None or accuracy > self.best:
      runs.save_best(self.model, self.out_dir, accuracy)
      self.best = accuracy


class EpochCheckpoint(keras.callbacks.Callback):
  """Saves the stage's training state (weights, optimizer, step count) at each epoch's end;
  trainer.train restores the newest before `fit`, whose epoch follows from the step count."""

  def __init__(self, out_dir: str, stage_name: str):
    super().__init__()
    self.out_dir = out_dir
    self.stage_name = stage_name
    self.manager = None

  def on_train_begin(self, logs=None):
    self.manager = runs.epoch_checkpoints(self.model, self.out_dir, self.stage_name)

  def on_epoch_end(self, epoch, logs=None):
    self.manager.save(checkpoint_number=epoch + 1)


class RecordSettings(keras.callbacks.Callback):
  """Writes config.json and flags.cfg after the first training step of each `fit`."""

  def __init__(self, out_dir: str, config: TrainConfig, settings_text: str):
    super().__init__()
    self.out_dir = out_dir
    self.config = config
    self.settings_text = settings_text
    self.recorded = False
    self._supports_tf_logs = True  # its logs stay tensors: no host sync at each step

  def on_train_batch_end(self, batch, logs=None):
    if not self.recorded:
      runs.record_config(self.out_dir, self.config, self.settings_text)
      self.recorded = True


class Throughput(keras.callbacks.Callback):
  """Training examples per second of each epoch, in TensorBoard only: history.csv stays a
  pure function of the settings, so two --deterministic runs write the same file.

  Timed from the epoch's start to the start of its validation (which `fit` runs before
  `on_epoch_end`), so validation and BatchNorm recalibration are left out.
  """

  def __init__(self, log_dir: str, examples_per_epoch: int):
    super().__init__()
    self.writer = tf.summary.create_file_writer(os.path.join(log_dir, 'train'))
    self.examples_per_epoch = examples_per_epoch
    self.epoch_start = 0.0
    self.training_seconds: Optional[float] = None

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch_start = time.perf_counter()
    self.training_seconds = None

  def on_test_begin(self, logs=None):
    if self.training_seconds is None:  # the first evaluation of the epoch: its validation
      self.training_seconds = time.perf_counter() - self.epoch_start

  def on_epoch_end(self, epoch, logs=None):
    seconds = self.training_seconds or time.perf_counter() - self.epoch_start
    with self.writer.as_default():
      tf.summary.scalar('epoch_examples_per_second', self.examples_per_epoch / seconds, step=epoch)
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
  """Ends training with one line at an epoch whose loss is not finite, or that has no
  validation metrics, before a checkpoint or the history records it.

  Checked once an epoch, where `fit` has the epoch's logs on the host anyway: a check at
  every step would wait for each step to finish, which stalls an accelerator.
  """

  def on_epoch_end(self, epoch, logs=None):
    loss = (logs or {}).get('loss')
    if loss is not None and not math.isfinite(loss):
      raise UserError(f'the training loss became {loss} in epoch {epoch + 1}: training '
                      'diverged; start a new run with a lower --learning_rate (the '
                      'checkpoints of earlier epochs are kept)')
    if 'val_accuracy' not in (logs or {}):
      raise UserError(f'epoch {epoch + 1} ended without validation metrics, so its '
                      'checkpoint could not be chosen; check that the validation split is not '
                      'empty (--validation_split, --eval_steps)')


def log_hparams(log_dir: str, config: TrainConfig, precision: str, replicas: int) -> None:
  """The run's settings for the HParams dashboard, written as the run starts so that runs
  still training, or stopped, show there too; `log_test_metrics` adds the test figures."""
  settings = {
      **dataclasses.asdict(config),
      **dataclasses.asdict(config.model),
      **dataclasses.asdict(config.source),
      'precision': precision,
      'replicas': replicas,
      # --learning_rate is per 256 examples; this is the peak the optimizer reaches.
      'peak_learning_rate': scaled_learning_rate(config.learning_rate, config.batch_size),
  }
  # HParams takes only bool, int, float and str values; the paths say nothing about the result.
  hparams = {
      name: value
      for name, value in settings.items()
      if isinstance(value, (bool, int, float, str)) and name not in ('run_dir', 'data_dir')
  }
  with tf.summary.create_file_writer(log_dir).as_default():
    # A trial is keyed by its id: the folder's whole path, as two runs of the same name in
    # different folders would otherwise share a row (and average their metrics).
    hparams_api.hparams(hparams, trial_id=runs.run_id(config.run_dir))


def log_test_metrics(log_dir: str, metrics: dict, step: int) -> None:
  with tf.summary.create_file_writer(log_dir).as_default():
    for name, value in metrics.items():
      tf.summary.scalar(name, value, step=step)


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
