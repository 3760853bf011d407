"""Training: compile and `fit` in stages, keep the best checkpoint, evaluate on the test split.

A run is one or two stages (see `plan_stages`):
  finetune   every layer trains from the pretrained start
  transfer   the backbone is frozen; only the adapter and the head train
  two_stage  frozen for --frozen_epochs, then unfrozen, recompiled, trained at a lower rate.
    Unlike the Keras "Transfer learning & fine-tuning" guide, the unfrozen backbone's
    BatchNorm layers train too (trainer/model.py says why).

What a run writes, and where, is trainer/runs.py's business; the callbacks are in
trainer/callbacks.py.
"""
import dataclasses
import sys
from typing import Any, List, Optional

import tensorflow as tf
from absl import logging

from trainer import callbacks, data, distribution, export, runs, weights
from trainer.config import REFERENCE_BATCH_SIZE, TrainConfig
from trainer.keras_lib import keras
from trainer.model import backbone_of, build_model, set_backbone_trainable


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
  return [
      Stage('frozen', 0, config.frozen_epochs, False, config.learning_rate),
      Stage('unfrozen', config.frozen_epochs, config.epochs, True, config.unfrozen_learning_rate)
  ]


def train_and_evaluate(config: TrainConfig, splits: data.Splits, strategy: tf.distribute.Strategy,
                       start_weights: Optional[str]) -> dict:
  """Trains from `start_weights` (see trainer/weights.py; None: a random start), restores the
  best checkpoint, evaluates it on the test split, exports; returns the test metrics."""
  keras.utils.set_random_seed(config.seed)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  chief = distribution.is_chief(strategy)
  steps = config.steps_per_epoch or data.steps_per_epoch(splits.train, config.batch_size)
  validation = splits.evaluation_batches('validation', config.batch_size, config.eval_steps)
  logging.info('%d replica(s), global batch %d, precision %s', strategy.num_replicas_in_sync,
               config.batch_size,
               keras.mixed_precision.global_policy().name)

  with strategy.scope():
    model = build_model(config.model, splits.info.image_shape, splits.info.num_classes)
    if start_weights:
      weights.load_into_backbone(backbone_of(model), start_weights)

  with distribution.OutputDir(config.run_dir, chief) as out:
    runs.write_dataset_info(out, splits.info)
    callbacks.log_preprocessed_images(model, splits.validation, runs.log_dir(out))
    stages = plan_stages(config)
    for stage in stages:
      train_stage(model, stage, config, splits, validation, steps, strategy, out)

    # Recompiled first: the best checkpoint may come from the frozen stage, whose Adam slots
    # do not fit the unfrozen model's optimizer; a fresh optimizer has no slots to fit yet.
    with strategy.scope():
      compile_for_stage(model, stages[-1], config, steps, splits.info.num_classes)
    runs.restore(model, runs.path(config.run_dir, runs.BEST_CHECKPOINT))
    test = splits.evaluation_batches('test', config.batch_size, config.eval_steps)
    results = model.evaluate(test, return_dict=True, verbose=0)
    metrics = {
        'test_loss': results['crossentropy'],
        'test_accuracy': results['accuracy'],
        'test_objective': results['loss']
    }
    print(f'Test loss : {metrics["test_loss"]:.5f}')
    print(f'Test accuracy: {metrics["test_accuracy"]:.4f}')
    callbacks.log_hparams(runs.log_dir(out), config, metrics,
                          keras.mixed_precision.global_policy().name, strategy.num_replicas_in_sync)
    # A model of its own, built outside the strategy: only the chief needs to write it.
    if config.export and chief:
      export.export_run(out)
    runs.write_metrics(out, metrics)
  return metrics


def train_stage(model: keras.Model, stage: Stage, config: TrainConfig, splits: data.Splits,
                validation: tf.data.Dataset, steps: int, strategy: tf.distribute.Strategy,
                out: str) -> None:
  """Fits one stage, or loads its weights if an earlier run finished it."""
  finished = runs.stage_checkpoint(config.run_dir, stage.name)
  if runs.checkpoint_exists(finished):
    logging.info('Stage %s finished in an earlier run; loading its weights', stage.name)
    runs.restore(model, finished)
    return
  # BackupAndRestore picks the epoch to resume at inside fit; the data stream must start
  # there too, and the history must not keep rows of epochs the backup did not record.
  backed_up = runs.backed_up_epoch(config.run_dir, stage.name)
  first_epoch = stage.initial_epoch if backed_up is None else backed_up + 1
  if distribution.is_chief(strategy):
    runs.trim_history(config.run_dir, first_epoch)
  with strategy.scope():
    compile_for_stage(model, stage, config, steps, splits.info.num_classes)
  logging.info('Stage %s: epochs %d-%d, backbone %s', stage.name, first_epoch + 1, stage.epochs,
               'training' if stage.backbone_trainable else 'frozen')
  model.fit(
      splits.training_batches(config.batch_size,
                              seed=config.seed,
                              first_step=first_epoch * steps,
                              strategy=strategy),
      epochs=stage.epochs,
      initial_epoch=stage.initial_epoch,
      steps_per_epoch=steps,
      validation_data=validation,
      validation_steps=data.num_examples(validation),
      # A progress bar on a terminal; in a log file, one line per epoch.
      verbose=1 if sys.stdout.isatty() else 2,
      callbacks=callbacks.training_callbacks(config, out, stage.name,
                                             stage.backbone_trainable, steps,
                                             runs.best_validation_accuracy(config.run_dir), splits))
  # BackupAndRestore forgets a stage once it ends, so a finished stage leaves its
  # weights behind for a resumed run to start the next one from (or, after the
  # last stage, to go straight to the test instead of training again).
  model.save_weights(runs.stage_checkpoint(out, stage.name))
  # The workers go on to read what the chief just wrote (the best checkpoint, the
  # history, this stage's weights); wait until it has written all of it.
  distribution.barrier(strategy)


def compile_for_stage(model: keras.Model, stage: Stage, config: TrainConfig, steps_per_epoch: int,
                      num_classes: int) -> None:
  set_backbone_trainable(model, stage.backbone_trainable)
  model.compile(optimizer=optimizer(stage, config, steps_per_epoch),
                loss=SmoothedCrossentropy(num_classes, config.label_smoothing),
                metrics=[
                    keras.metrics.SparseCategoricalAccuracy(name='accuracy'),
                    keras.metrics.SparseCategoricalCrossentropy(name='crossentropy')
                ],
                jit_compile=config.jit_compile,
                steps_per_execution=config.steps_per_execution)


def optimizer(stage: Stage, config: TrainConfig,
              steps_per_epoch: int) -> keras.optimizers.Optimizer:
  """Adam on the stage's schedule; with --weight_decay, AdamW's decoupled decay."""
  adam = keras.optimizers.Adam(learning_rate_schedule(stage, config, steps_per_epoch),
                               weight_decay=config.weight_decay or None)
  if config.weight_decay:
    # BatchNorm's scales and offsets and the biases are few and set where a layer's outputs
    # sit rather than what it fits; the usual AdamW practice leaves them undecayed.
    adam.exclude_from_weight_decay(var_names=['gamma', 'beta', 'bias'])
  return adam


def learning_rate_schedule(stage: Stage, config: TrainConfig,
                           steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
  """Linear warmup to the peak rate (scaled with the global batch), then cosine decay to 0."""
  peak = stage.learning_rate * config.batch_size / REFERENCE_BATCH_SIZE
  total_steps = (stage.epochs - stage.initial_epoch) * steps_per_epoch
  warmup_steps = min(round(config.warmup_epochs * steps_per_epoch), total_steps - 1)
  return keras.optimizers.schedules.CosineDecay(initial_learning_rate=0.0,
                                                decay_steps=total_steps - warmup_steps,
                                                warmup_target=peak,
                                                warmup_steps=warmup_steps)


class SmoothedCrossentropy(keras.losses.Loss):
  """Cross-entropy on integer labels with label smoothing, which the sparse Keras loss lacks."""

  def __init__(self,
               num_classes: int,
               label_smoothing: float = 0.0,
               name: str = 'smoothed_crossentropy',
               **kwargs: Any) -> None:
    super().__init__(name=name, **kwargs)
    self.num_classes = num_classes
    self.label_smoothing = label_smoothing

  def call(self, y_true, y_pred):
    labels = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), self.num_classes)
    return keras.losses.categorical_crossentropy(labels,
                                                 y_pred,
                                                 label_smoothing=self.label_smoothing)

  def get_config(self):
    return {
        **super().get_config(), 'num_classes': self.num_classes,
        'label_smoothing': self.label_smoothing
    }
