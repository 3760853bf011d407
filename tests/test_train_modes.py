"""--train_mode (finetune, transfer, two_stage), the learning-rate schedule, weight decay and
label smoothing.

The DenseNet121 run trains on synthetic data, which is also this suite's check that
--dataset=synthetic trains.
"""
import csv
import math
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from helpers import TINY_FLAGS, error_line, event_tags, run_offline, train_with_flags
from trainer import callbacks, main, runs, train
from trainer.config import REFERENCE_BATCH_SIZE, TrainConfig
from trainer.keras_lib import keras
from trainer.model import BACKBONE, BACKBONE_INPUT, backbone_of
from trainer.train import Stage, learning_rate_schedule, plan_stages


def config(**fields):
  return TrainConfig(run_dir='unused', **fields)


def test_each_mode_plans_its_stages():
  assert plan_stages(config(train_mode='finetune', epochs=5,
                            learning_rate=1e-3)) == [Stage('finetune', 0, 5, True, 1e-3)]
  assert plan_stages(config(train_mode='transfer', epochs=5,
                            learning_rate=1e-3)) == [Stage('transfer', 0, 5, False, 1e-3)]
  assert plan_stages(
      config(train_mode='two_stage',
             epochs=5,
             frozen_epochs=2,
             learning_rate=1e-3,
             unfrozen_learning_rate=1e-4)) == [
                 Stage('frozen', 0, 2, False, 1e-3),
                 Stage('unfrozen', 2, 5, True, 1e-4)
             ]


# ---- What each mode trains, seen from inside a run.


class Snapshots(keras.callbacks.Callback):
  """Copies the backbone's and the head's weights before training and after every epoch."""

  def __init__(self, taken):
    super().__init__()
    self.taken = taken

  def on_train_begin(self, logs=None):
    if not self.taken:  # only before the first stage
      self.taken.append(self.snapshot())

  def on_epoch_end(self, epoch, logs=None):
    self.taken.append(self.snapshot())

  def snapshot(self):
    backbone = backbone_of(self.model)
    # By name: a frozen layer lists its weights in another order.
    return {
        'backbone': {
            w.name: w.numpy() for w in backbone.weights
        },
        'trainable': {w.name for w in backbone.trainable_weights},
        'head': self.model.get_layer('logits').kernel.numpy()
    }


def stand_in_model(config, input_shape, num_classes):
  """A small model laid out like build_model's: a nested backbone with BatchNorm, then the head."""
  images = keras.Input(input_shape, dtype='uint8')
  x = keras.layers.Rescaling(1 / 255, name=BACKBONE_INPUT)(images)
  backbone = keras.Sequential([
      keras.layers.Conv2D(4, 3),
      keras.layers.BatchNormalization(),
      keras.layers.GlobalAveragePooling2D()
  ],
                              name=BACKBONE)
  logits = keras.layers.Dense(num_classes, name='logits')(backbone(x))
  return keras.Model(images, keras.layers.Activation('softmax')(logits))


def train_and_snapshot(monkeypatch, run_dir, *argv):
  """Runs trainer.main; returns the weights before training and after each epoch."""
  taken = []
  stage_callbacks = callbacks.training_callbacks
  monkeypatch.setattr(callbacks, 'training_callbacks',
                      lambda *args, **kwargs: stage_callbacks(*args, **kwargs) + [Snapshots(taken)])
  train_with_flags(*TINY_FLAGS, '--frozen_epochs=1', '--noexport', f'--run_dir={run_dir}', *argv)
  return taken


def assert_trained_as_planned(taken, run_dir, backbone_trains):
  assert len(taken) == 1 + len(backbone_trains)
  for before, after, trains in zip(taken, taken[1:], backbone_trains):
    assert not np.array_equal(before['head'], after['head'])
    moved = {
        name for name, value in after['backbone'].items()
        if not np.array_equal(value, before['backbone'][name])
    }
    if trains:
      # Every trainable weight took a step, and BatchNorm's statistics followed the data.
      assert after['trainable'] and after['trainable'] <= moved
      assert any('moving_mean' in name for name in moved)
    else:
      # Frozen means all of it, BatchNorm statistics included (inference mode).
      assert not after['trainable'] and not moved, sorted(moved)[:5]
  with open(os.path.join(run_dir, 'history.csv')) as f:
    logged = [float(row['backbone_trainable']) for row in csv.DictReader(f)]
  assert logged == [float(trains) for trains in backbone_trains]
  assert 'epoch_backbone_trainable' in event_tags(os.path.join(run_dir, 'logs', 'train'))


@pytest.mark.parametrize(
    'mode, epochs, backbone_trains',
    [
        ('transfer', 1, [False]),
        ('finetune', 1, [True]),
        ('two_stage', 2, [False, True]),  # --frozen_epochs=1: frozen, then unfrozen
    ])
def test_a_mode_trains_what_it_says(mode, epochs, backbone_trains, tmp_path, monkeypatch,
                                    mock_mnist):
  # A stand-in backbone: the modes work the same on any nested model, in seconds.
  monkeypatch.setattr(train, 'build_model', stand_in_model)
  run_dir = str(tmp_path / 'run')
  taken = train_and_snapshot(monkeypatch, run_dir, f'--train_mode={mode}', f'--epochs={epochs}',
                             '--weights=none', f'--data_dir={tmp_path / "tfds"}')
  assert_trained_as_planned(taken, run_dir, backbone_trains)


def test_two_stage_switches_densenet121_from_frozen_to_training(tmp_path, monkeypatch,
                                                                notop_weights_file):
  run_dir = str(tmp_path / 'run')
  taken = train_and_snapshot(monkeypatch, run_dir, '--dataset=synthetic', '--train_mode=two_stage',
                             '--epochs=2', f'--weights={notop_weights_file}')
  assert_trained_as_planned(taken, run_dir, [False, True])


def test_two_stage_restores_a_best_epoch_from_the_frozen_stage(tmp_path, monkeypatch, mock_mnist):
  # As when unfreezing first costs accuracy: no epoch after the frozen stage beats its best.
  first_best = runs.best_validation_accuracy
  monkeypatch.setattr(runs, 'best_validation_accuracy', lambda run_dir: None
                      if first_best(run_dir) is None else math.inf)
  monkeypatch.setattr(train, 'build_model', stand_in_model)
  metrics = train_with_flags(*TINY_FLAGS, '--train_mode=two_stage', '--epochs=2',
                             '--frozen_epochs=1', '--weights=none', '--noexport',
                             f'--data_dir={tmp_path / "tfds"}', f'--run_dir={tmp_path / "run"}')
  assert 0 <= metrics['test_accuracy'] <= 1


def test_frozen_epochs_must_be_below_epochs(tmp_path):
  result, _ = run_offline('trainer.main', '--train_mode=two_stage', '--epochs=3',
                          '--frozen_epochs=3', f'--run_dir={tmp_path / "run"}')
  assert '--frozen_epochs must be below --epochs for --train_mode=two_stage' in error_line(result)


# ---- The learning rate: warmup, then cosine decay, peak scaled with the global batch.


def test_the_rate_warms_up_to_a_batch_scaled_peak_then_decays_to_zero():
  run = config(batch_size=512, learning_rate=1e-3, warmup_epochs=1)
  schedule = learning_rate_schedule(Stage('finetune', 0, 3, True, 1e-3), run, steps_per_epoch=10)
  peak = 1e-3 * 512 / REFERENCE_BATCH_SIZE
  rate = lambda step: float(schedule(step))
  assert rate(0) == 0 and math.isclose(rate(5), peak / 2, rel_tol=1e-5)
  assert math.isclose(rate(10), peak, rel_tol=1e-5)
  assert math.isclose(rate(20), peak / 2, rel_tol=1e-5)  # half-way down the cosine
  assert rate(30) < 1e-9


def test_the_second_stage_warms_up_again_to_its_own_rate():
  run = config(batch_size=128, warmup_epochs=0.5)
  schedule = learning_rate_schedule(Stage('unfrozen', 2, 4, True, 1e-4), run, steps_per_epoch=10)
  assert float(schedule(0)) == 0
  assert math.isclose(float(schedule(5)), 1e-4 * 128 / REFERENCE_BATCH_SIZE, rel_tol=1e-5)


# ---- Label smoothing.


def test_label_smoothing_spreads_the_target():
  y_pred = tf.constant([[0.7, 0.2, 0.1]])
  smoothed = train.SmoothedCrossentropy(3, label_smoothing=0.3)(tf.constant([0]), y_pred)
  target = np.array([0.7 + 0.1, 0.1, 0.1])  # 1 - 0.3 on the label, 0.3 shared by all 3 classes
  np.testing.assert_allclose(smoothed, -np.sum(target * np.log([0.7, 0.2, 0.1])), rtol=1e-5)
  plain = train.SmoothedCrossentropy(3)(tf.constant([0]), y_pred)
  np.testing.assert_allclose(plain, -np.log(0.7), rtol=1e-5)


def test_the_flags_reach_the_compiled_model():
  flags.FLAGS([
      'trainer.main', '--label_smoothing=0.1', '--train_mode=two_stage', '--epochs=3',
      '--frozen_epochs=1', '--learning_rate=0.002', '--unfrozen_learning_rate=0.0002'
  ])
  run = main.config_from_flags()
  frozen, unfrozen = plan_stages(run)
  # A stand-in with a sub-model named like the backbone: compiling needs no DenseNet121.
  images = keras.Input((4,))
  backbone = keras.Sequential([keras.layers.Dense(3)], name='densenet121')
  model = keras.Model(images, keras.layers.Dense(2, name='logits')(backbone(images)))
  for stage, peak in [(frozen, 0.002), (unfrozen, 0.0002)]:
    train.compile_for_stage(model, stage, run, steps_per_epoch=10, num_classes=2)
    assert model.loss.label_smoothing == 0.1
    assert backbone.trainable == stage.backbone_trainable
    schedule = model.optimizer.get_config()['learning_rate']['config']
    assert math.isclose(schedule['warmup_target'], peak * run.batch_size / REFERENCE_BATCH_SIZE)


# ---- Weight decay.


def test_weight_decay_shrinks_kernels_by_the_rate_and_spares_batchnorm_and_biases():
  run = config(weight_decay=0.5,
               learning_rate=0.1,
               batch_size=REFERENCE_BATCH_SIZE,
               warmup_epochs=0)
  images = keras.Input((4,))
  backbone = keras.Sequential(
      [keras.layers.Dense(3), keras.layers.BatchNormalization()], name='densenet121')
  model = keras.Model(images, keras.layers.Dense(2, name='logits')(backbone(images)))
  train.compile_for_stage(model,
                          Stage('finetune', 0, 1, True, 0.1),
                          run,
                          steps_per_epoch=10,
                          num_classes=2)
  before = [v.numpy() for v in model.trainable_variables]
  # Zero gradients: Adam moves nothing, so every change is the decay's (rate 0.1 at step 0).
  model.optimizer.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
  for variable, old in zip(model.trainable_variables, before):
    decayed = 'kernel' in variable.name
    np.testing.assert_allclose(variable.numpy(),
                               old * (1 - 0.5 * 0.1) if decayed else old,
                               rtol=1e-6,
                               err_msg=variable.name)


def test_no_weight_decay_is_plain_adam():
  images = keras.Input((4,))
  backbone = keras.Sequential([keras.layers.Dense(3)], name='densenet121')
  model = keras.Model(images, backbone(images))
  train.compile_for_stage(model,
                          Stage('finetune', 0, 1, True, 0.1),
                          config(),
                          steps_per_epoch=10,
                          num_classes=3)
  assert model.optimizer.weight_decay is None
