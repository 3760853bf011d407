"""Training: compile and `fit` in stages, keep the best checkpoint, evaluate on the test split.

A run is one or two stages (see `plan_stages`):
  finetune   every layer trains from the pretrained start
  transfer   the backbone is frozen; only the adapter and the head train
  two_stage  frozen for --frozen_epochs, then unfrozen, recompiled, trained at a lower rate
    (the Keras "Transfer learning & fine-tuning" guide's recipe)

Everything a run writes lands in its run folder:
  flags.cfg                 the resolved flags (written by main; rerun with --flagfile)
  dataset.json              the image shape and classes the model takes (trainer/export.py)
  logs/                     TensorBoard: train/ and validation/ scalars, preprocessed images,
                            the settings and test metrics for the HParams dashboard
  checkpoints/best*         the weights with the best validation accuracy
  history.csv               per-epoch metrics, appended across resumes
  metrics.json              test results; its presence marks the run as finished
  export/, model.keras      the SavedModel that takes raw images, and the Keras model
  backup/                   BackupAndRestore's state while a stage is in flight
"""
import csv
import dataclasses
import json
import math
import os
import time
from typing import List, Optional

import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from trainer import data, distribution, export, weights
from trainer.errors import UserError
from trainer.keras_lib import keras
from trainer.model import ModelConfig, backbone_of, build_model, preprocessing_model, \
  set_backbone_trainable

TRAIN_MODES = ('finetune', 'transfer', 'two_stage')
# --learning_rate is the peak rate for this global batch; it scales linearly with the batch.
REFERENCE_BATCH_SIZE = 256
BEST_CHECKPOINT = os.path.join('checkpoints', 'best')
METRICS_FILE = 'metrics.json'
HISTORY_FILE = 'history.csv'
NUM_LOGGED_IMAGES = 8


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  run_dir: str
  dataset: str = 'mnist'
  data_dir: Optional[str] = None
  download: bool = True
  validation_split: float = 0.2
  model: ModelConfig = ModelConfig()
  weights: str = 'imagenet'
  train_mode: str = 'finetune'
  epochs: int = 10
  frozen_epochs: int = 2
  batch_size: int = 128
  learning_rate: float = 1e-3
  unfrozen_learning_rate: float = 1e-4
  warmup_epochs: float = 1.0
  label_smoothing: float = 0.0
  steps_per_epoch: int = 0  # 0: one pass over the training split
  eval_steps: int = 0  # 0: the whole validation and test splits
  seed: int = 0
  export: bool = True
  profile_steps: str = ''  # batches to trace for TensorBoard's Profile tab: 'N' or 'FIRST,LAST'


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  initial_epoch: int
  epochs: int  # the epoch this stage ends at, as in fit(initial_epoch=..., epochs=...)
  backbone_trainable: bool
  learning_rate: float


def plan_stages(config: TrainConfig) -> List[Stage]:
  if config.train_mode == 'finetune':
    return [Stage('finetune', 0, config.epochs, True, config.learning_rate)]
  if config.train_mode == 'transfer':
    return [Stage('transfer', 0, config.epochs, False, config.learning_rate)]
  if config.train_mode == 'two_stage':
    return [Stage('frozen', 0, config.frozen_epochs, False, config.learning_rate),
            Stage('unfrozen', config.frozen_epochs, config.epochs, True,
                  config.unfrozen_learning_rate)]
  raise ValueError(f'unknown train_mode {config.train_mode!r}; expected one of {TRAIN_MODES}')


def train_and_evaluate(config: TrainConfig, splits: data.Splits, strategy: tf.distribute.Strategy,
                       weights_path: Optional[str]) -> dict:
  """Trains from `weights_path` (None: a random start), restores the best checkpoint,
  evaluates on the test split; returns the test metrics."""
  chief = distribution.is_chief(strategy)
  replicas = strategy.num_replicas_in_sync
  print(f'{replicas} replica(s), global batch {config.batch_size}, '
        f'{config.batch_size // replicas} per replica, '
        f'precision {keras.mixed_precision.global_policy().name}')

  # ---- Input pipeline: uint8 batches at the stored size.
  validation_ds = data.evaluation_batches(splits.validation, config.batch_size, config.eval_steps)
  test_ds = data.evaluation_batches(splits.test, config.batch_size, config.eval_steps)
  steps = config.steps_per_epoch or data.steps_per_epoch(splits.train, config.batch_size)

  # ---- Model, with the pretrained backbone.
  with strategy.scope():
    model = build_model(config.model, splits.image_shape, splits.num_classes)
    if weights_path:
      loaded = weights.load_into_backbone(backbone_of(model), weights_path)
      print(f'Loaded {weights_path} into {loaded} backbone layers')

  with distribution.OutputDir(config.run_dir, chief) as out:
    export.write_dataset_info(out, splits)
    log_dir = os.path.join(out, 'logs')
    log_preprocessed_images(model, splits.validation, log_dir)

    # ---- Train, stage by stage.
    stages = plan_stages(config)
    for stage in stages:
      # BackupAndRestore forgets a stage once it ends, so a finished stage leaves its
      # weights behind for a resumed run to start the next one from (or, after the
      # last stage, to go straight to the test instead of training again).
      finished = os.path.join(config.run_dir, 'checkpoints', f'after_{stage.name}')
      if _exists(finished):
        print(f'Stage {stage.name} finished in an earlier run; loading its weights')
        model.load_weights(finished)
        continue
      with strategy.scope():
        compile_for_stage(model, stage, config, steps, splits.num_classes)
      print(f'Stage {stage.name}: epochs {stage.initial_epoch + 1}-{stage.epochs}, '
            f'backbone {"training" if stage.backbone_trainable else "frozen"}')
      # A pipeline of its own for each stage, starting where the stage starts in the stream.
      train_ds = data.training_batches(splits.train, config.batch_size, seed=config.seed,
                                       first_step=stage.initial_epoch * steps)
      model.fit(train_ds, epochs=stage.epochs, initial_epoch=stage.initial_epoch,
                steps_per_epoch=steps, validation_data=validation_ds,
                validation_steps=data.num_examples(validation_ds), verbose=2,
                callbacks=callbacks(config, out, log_dir, stage, steps))
      model.save_weights(finished if chief else os.path.join(out, 'after_stage'))
      # The workers go on to read what the chief just wrote (the best checkpoint, the
      # history, this stage's weights); wait until it has written all of it.
      distribution.barrier(strategy)

    # ---- Evaluate the best checkpoint on the test split.
    # Recompiled first: the best checkpoint may come from the frozen stage, whose Adam slots
    # do not fit the unfrozen model's optimizer; a fresh optimizer has no slots to fit yet.
    with strategy.scope():
      compile_for_stage(model, stages[-1], config, steps, splits.num_classes)
    # expect_partial: the checkpoint's optimizer state is not needed to evaluate.
    model.load_weights(os.path.join(config.run_dir, BEST_CHECKPOINT)).expect_partial()
    results = model.evaluate(test_ds, return_dict=True, verbose=0)
    metrics = {'test_loss': results['crossentropy'], 'test_accuracy': results['accuracy'],
               'test_objective': results['loss']}
    print(f'Test loss : {metrics["test_loss"]:.5f}')
    print(f'Test accuracy: {metrics["test_accuracy"]:.4f}')
    log_hparams(log_dir, config, metrics, replicas)
    if config.export:
      export.export_model(model, out)
    with tf.io.gfile.GFile(os.path.join(out, METRICS_FILE), 'w') as f:  # gs:// run folders too
      json.dump(metrics, f, indent=2)
  return metrics


def _exists(checkpoint_prefix):
  return tf.io.gfile.exists(checkpoint_prefix + '.index')


def compile_for_stage(model, stage: Stage, config: TrainConfig, steps_per_epoch: int,
                      num_classes: int):
  set_backbone_trainable(model, stage.backbone_trainable)
  model.compile(
      optimizer=keras.optimizers.Adam(learning_rate_schedule(stage, config, steps_per_epoch)),
      loss=SmoothedCrossentropy(num_classes, config.label_smoothing),
      metrics=[keras.metrics.SparseCategoricalAccuracy(name='accuracy'),
               keras.metrics.SparseCategoricalCrossentropy(name='crossentropy')])


def learning_rate_schedule(stage: Stage, config: TrainConfig, steps_per_epoch: int):
  """Linear warmup to the peak rate (scaled with the global batch), then cosine decay to 0."""
  peak = stage.learning_rate * config.batch_size / REFERENCE_BATCH_SIZE
  total_steps = (stage.epochs - stage.initial_epoch) * steps_per_epoch
  warmup_steps = min(round(config.warmup_epochs * steps_per_epoch), total_steps - 1)
  return keras.optimizers.schedules.CosineDecay(
      initial_learning_rate=0.0, decay_steps=total_steps - warmup_steps,
      warmup_target=peak, warmup_steps=warmup_steps)


class SmoothedCrossentropy(keras.losses.Loss):
  """Cross-entropy on integer labels with label smoothing, which the sparse Keras loss lacks."""

  def __init__(self, num_classes, label_smoothing=0.0, name='smoothed_crossentropy', **kwargs):
    super().__init__(name=name, **kwargs)
    self.num_classes = num_classes
    self.label_smoothing = label_smoothing

  def call(self, y_true, y_pred):
    labels = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), self.num_classes)
    return keras.losses.categorical_crossentropy(labels, y_pred,
                                                 label_smoothing=self.label_smoothing)

  def get_config(self):
    return {**super().get_config(), 'num_classes': self.num_classes,
            'label_smoothing': self.label_smoothing}


def callbacks(config: TrainConfig, out: str, log_dir: str, stage: Stage, steps_per_epoch: int):
  # At an epoch's end they run in this order; the order matters when a run is killed.
  return [
      EpochScalars(stage, config.batch_size * steps_per_epoch),  # first: it adds to the logs
      # Before anything is written for an epoch that cannot be trusted.
      StopOnBadEpoch(),
      keras.callbacks.ModelCheckpoint(
          os.path.join(out, BEST_CHECKPOINT), monitor='val_accuracy', mode='max',
          save_best_only=True, save_weights_only=True,
          # A resumed run must beat what it already saved, never overwrite a better checkpoint.
          # So the checkpoint comes before the history that this threshold is read from.
          initial_value_threshold=best_validation_accuracy(config.run_dir)),
      keras.callbacks.CSVLogger(os.path.join(out, HISTORY_FILE), append=True),
      keras.callbacks.TensorBoard(log_dir, update_freq='epoch',
                                  profile_batch=config.profile_steps or 0),
      # Preemption: a restarted run resumes this stage after its last backed-up epoch. Last,
      # so that an epoch counts as done only once its checkpoint and history are written.
      keras.callbacks.BackupAndRestore(os.path.join(config.run_dir, 'backup', stage.name)),
  ]


class StopOnBadEpoch(keras.callbacks.Callback):
  """Ends training with one line at the first non-finite loss, or at an epoch without
  validation metrics, before a checkpoint or the history records it."""

  def __init__(self):
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


def best_validation_accuracy(run_dir):
  """The best val_accuracy in the run's history so far, or None for a new run."""
  path = os.path.join(run_dir, HISTORY_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    values = [float(row['val_accuracy']) for row in csv.DictReader(f) if row.get('val_accuracy')]
  return max(values, default=None)


class EpochScalars(keras.callbacks.Callback):
  """Adds the learning rate, the backbone's state and the throughput to each epoch's logs."""

  def __init__(self, stage: Stage, examples_per_epoch: int):
    super().__init__()
    self.stage = stage
    self.examples_per_epoch = examples_per_epoch
    self.epoch_start = None

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch_start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    optimizer = self.model.optimizer
    schedule = optimizer.learning_rate
    # get_value, not float(): under a distribution strategy the rate is a MirroredVariable.
    logs['learning_rate'] = float(keras.backend.get_value(
        schedule(optimizer.iterations) if callable(schedule) else schedule))
    logs['backbone_trainable'] = float(self.stage.backbone_trainable)
    logs['examples_per_second'] = self.examples_per_epoch / (time.perf_counter() - self.epoch_start)


def log_hparams(log_dir, config: TrainConfig, metrics: dict, replicas: int):
  """The run's settings and test metrics for the HParams dashboard, so runs compare side by side."""
  settings = {**dataclasses.asdict(config), **dataclasses.asdict(config.model),
              'precision': keras.mixed_precision.global_policy().name, 'replicas': replicas}
  # HParams takes only bool, int, float and str values; the paths say nothing about the result.
  hparams = {name: value for name, value in settings.items()
             if isinstance(value, (bool, int, float, str)) and name not in ('run_dir', 'data_dir')}
  with tf.summary.create_file_writer(log_dir).as_default():
    hparams_api.hparams(hparams, trial_id=os.path.basename(os.path.normpath(config.run_dir)))
    for name, value in metrics.items():
      tf.summary.scalar(name, value, step=config.epochs)


def log_preprocessed_images(model, dataset, log_dir):
  """The first images of the unbatched `dataset` as the backbone receives them, rescaled per image to [0, 1] for display."""
  images, _ = next(iter(dataset.take(NUM_LOGGED_IMAGES).batch(NUM_LOGGED_IMAGES)))
  seen = preprocessing_model(model)(images[:NUM_LOGGED_IMAGES], training=False)
  low = tf.reduce_min(seen, axis=[1, 2, 3], keepdims=True)
  high = tf.reduce_max(seen, axis=[1, 2, 3], keepdims=True)
  with tf.summary.create_file_writer(os.path.join(log_dir, 'train')).as_default():
    tf.summary.image('preprocessed_inputs', (seen - low) / (high - low + 1e-6), step=0,
                     max_outputs=NUM_LOGGED_IMAGES)
