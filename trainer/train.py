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
from trainer.config import TrainConfig, scaled_learning_rate
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
                       start_weights: Optional[str], settings_text: str) -> dict:
  """Trains from `start_weights` (see trainer/weights.py; None: a random start), restores the
  best checkpoint, evaluates it on the test split, exports; returns the test metrics.

  `settings_text` (flags.cfg) is recorded with config.json once training has taken a step.
  """
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
    precision = keras.mixed_precision.global_policy().name
    callbacks.log_hparams(runs.log_dir(out), config, precision, strategy.num_replicas_in_sync)
    callbacks.log_preprocessed_images(model, splits.validation, runs.log_dir(out))
    stages = plan_stages(config)
    for stage in stages:
      train_stage(model, stage, config, splits, validation, steps, strategy, out, settings_text)

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
    callbacks.log_test_metrics(runs.log_dir(out), metrics, config.epochs)
    # A model of its own, built outside the strategy: only the chief needs to write it.
    if config.export and chief:
      export.export_run(out)
    runs.write_metrics(out, metrics)
    # After metrics.json, which marks the run finished: a finished run is never resumed.
    runs.drop_training_state(out, [stage.name for stage in stages])
  return metrics


def train_stage(model: keras.Model, stage: Stage, config: TrainConfig, splits: data.Splits,
                validation: tf.data.Dataset, steps: int, strategy: tf.distribute.Strategy, out: str,
                settings_text: str) -> None:
  """Fits one stage from its newest epoch checkpoint, if an earlier run left one; a stage
  whose last epoch was checkpointed is only restored."""
  with strategy.scope():
    compile_for_stage(model, stage, config, steps, splits.info.num_classes)
    # Every worker restores the chief's checkpoint, in the shared run folder.
    steps_done = runs.restore_training_state(model, config.run_dir, stage.name)
  first_epoch = stage.initial_epoch + steps_done // steps
  if first_epoch >= stage.epochs:
    logging.info('Stage %s finished in an earlier run', stage.name)
    return
  # The history must not keep rows of epochs after the checkpoint: they are trained again.
  if distribution.is_chief(strategy):
    runs.trim_history(config.run_dir, first_epoch)
  logging.info('Stage %s: epochs %d-%d, backbone %s, peak learning rate %g', stage.name,
               first_epoch + 1, stage.epochs, 'training' if stage.backbone_trainable else 'frozen',
               scaled_learning_rate(stage.learning_rate, config.batch_size))
  model.fit(
      splits.training_batches(config.batch_size,
                              seed=config.seed,
                              first_step=first_epoch * steps,
                              strategy=strategy),
      epochs=stage.epochs,
      initial_epoch=first_epoch,
      steps_per_epoch=steps,
      validation_data=validation,
      validation_steps=data.num_examples(validation),
      # A progress bar on a terminal; in a log file, one line per epoch.
      verbose=1 if sys.stdout.isatty() else 2,
      callbacks=callbacks.training_callbacks(config, out, stage.name, stage.backbone_trainable,
                                             learning_rate_schedule(stage, config, steps), steps,
                                             splits, settings_text))
  # The workers go on to read what the chief just wrote (the best checkpoint, the
  # history); wait until it has written all of it.
  distribution.barrier(strategy)


def compile_for_stage(model: keras.Model, stage: Stage, config: TrainConfig, steps_per_epoch: int,
                      num_classes: int) -> None:
  set_backbone_trainable(model, stage.backbone_trainable)
  model.compile(optimizer=optimizer(learning_rate_schedule(stage, config, steps_per_epoch),
                                    config.weight_decay),
                loss=SmoothedCrossentropy(num_classes, config.label_smoothing),
                metrics=[
                    keras.metrics.SparseCategoricalAccuracy(name='accuracy'),
                    keras.metrics.SparseCategoricalCrossentropy(name='crossentropy')
                ],
                jit_compile=config.jit_compile,
                steps_per_execution=config.steps_per_execution)


def optimizer(schedule: keras.optimizers.schedules.LearningRateSchedule,
              weight_decay: float) -> keras.optimizers.Optimizer:
  """Adam on the stage's schedule; with --weight_decay, AdamW's decoupled decay."""
  adam = keras.optimizers.Adam(schedule, weight_decay=weight_decay or None)
  if weight_decay:
    # BatchNorm's scales and offsets and the biases are few and set where a layer's outputs
    # sit rather than what it fits; the usual AdamW practice leaves them undecayed.
    adam.exclude_from_weight_decay(var_names=['gamma', 'beta', 'bias'])
  return adam


def learning_rate_schedule(stage: Stage, config: TrainConfig,
                           steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
  """Linear warmup to the peak rate (scaled with the global batch), then cosine decay to 0."""
  peak = scaled_learning_rate(stage.learning_rate, config.batch_size)
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
