"""trainer/callbacks.py's BatchNorm recalibration and the end of augmentation; the other
callbacks are tested where a run uses them (test_runs, test_faults, test_resume)."""
import time

import numpy as np
import pytest
import tensorflow as tf

from helpers import event_values
from trainer.callbacks import RecalibrateBatchNorm, StopAugmentation, Throughput, unaugmented_epoch_count
from trainer.config import ModelConfig, TrainConfig
from trainer.keras_lib import keras
from trainer.model import AUGMENT, Augmentation, backbone_of, build_model, set_backbone_trainable


@pytest.mark.parametrize('replicas', [1, 2])
def test_recalibration_averages_unaugmented_batch_statistics_in_training_layers_only(replicas):
  keras.utils.set_random_seed(0)
  # Two replicas: the two logical CPUs of conftest.py, each normalising half of every batch.
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'][:replicas])
  with strategy.scope():
    model = build_model(ModelConfig(image_size=32, adapter='conv', augment=True), (28, 28, 1), 10)
  set_backbone_trainable(model, False)  # its BatchNorm layers then run in inference mode
  images = np.random.default_rng(0).integers(0, 256, (24, 28, 28, 1), dtype=np.uint8)
  batches = tf.data.Dataset.from_tensor_slices((images, np.zeros(24))).batch(8).repeat()
  stem_bn, backbone_bn = model.get_layer('stem_bn'), backbone_of(model).get_layer('conv1/bn')
  backbone_mean = backbone_bn.moving_mean.numpy()

  callback = RecalibrateBatchNorm(batches, num_batches=3)
  callback.set_model(model)
  callback.on_test_begin()

  # What the stem's BatchNorm sees: the stem convolution of the un-augmented images, in
  # parts of 8 / replicas.
  stem = keras.Model(model.input, model.get_layer('stem_conv').output)
  seen = np.split(stem(images, training=False).numpy(), 3 * replicas)
  np.testing.assert_allclose(stem_bn.moving_mean,
                             np.mean([s.mean((0, 1, 2)) for s in seen], 0),
                             rtol=1e-4)
  np.testing.assert_allclose(stem_bn.moving_variance,
                             np.mean([s.var((0, 1, 2)) for s in seen], 0),
                             rtol=1e-3)
  np.testing.assert_array_equal(backbone_bn.moving_mean, backbone_mean)
  # The momenta training uses are back.
  assert stem_bn.momentum == 0.99 and backbone_bn.momentum == ModelConfig().batchnorm_momentum


class MeanSeen(keras.layers.Layer):
  """Passes its input through and keeps the mean of the last batch it saw."""

  def build(self, input_shape):
    self.mean = self.add_weight(name='mean', shape=(), trainable=False, initializer='zeros')

  def call(self, inputs):
    self.mean.assign(tf.reduce_mean(inputs))
    return inputs


@pytest.mark.parametrize('replicas', [1, 2])
def test_training_sees_unaugmented_images_from_the_epoch_augmentation_stops(replicas):
  # Not collective ops: a second strategy in the same process (test_distribution's) numbers its
  # collectives from the same keys, and one of another shape under a key aborts them.
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'][:replicas],
                                            cross_device_ops=tf.distribute.ReductionToOneDevice())
  with strategy.scope():
    images = keras.Input((4,))
    # A stand-in augmentation whose effect is plain to see: it adds 100, in training only.
    shifted = Augmentation(
        [keras.layers.Lambda(lambda x, training=None: x + 100.0 if training else x)],
        name=AUGMENT)(images)
    probe = MeanSeen()
    model = keras.Model(images, keras.layers.Dense(1)(probe(shifted)))
    model.compile('sgd', 'mse')
  means = []
  record = keras.callbacks.LambdaCallback(
      on_epoch_end=lambda epoch, logs: means.append(float(probe.mean.numpy())))
  model.fit(np.ones((8, 4)),
            np.zeros(8),
            batch_size=8,
            epochs=4,
            verbose=0,
            callbacks=[StopAugmentation(first_epoch=2), record])
  np.testing.assert_allclose(means, [101, 101, 1, 1])


@pytest.mark.parametrize('fraction, epochs, expected', [(0.2, 10, 2), (0.3, 10, 3), (0.2, 2, 0),
                                                        (0.5, 3, 1), (0.9, 10, 9)])
def test_the_unaugmented_fraction_is_whole_epochs_rounded_down(fraction, epochs, expected):
  config = TrainConfig(epochs=epochs, unaugmented_fraction=fraction)
  assert unaugmented_epoch_count(config) == expected


def test_throughput_times_the_training_steps_not_the_validation(tmp_path):
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  model.compile('sgd', 'mse')
  throughput = Throughput(str(tmp_path), examples_per_epoch=8)
  slow_validation = keras.callbacks.LambdaCallback(on_test_begin=lambda logs: time.sleep(3))
  model.fit(
      np.ones((8, 2)),
      np.zeros(8),
      validation_data=(np.ones((2, 2)), np.zeros(2)),
      epochs=2,  # the second: no tracing in its step
      verbose=0,
      callbacks=[throughput, slow_validation])
  assert throughput.training_seconds < 3
  _, (_, rate, _) = event_values(str(tmp_path / 'train'), 'epoch_examples_per_second')
  assert rate == pytest.approx(8 / throughput.training_seconds, rel=1e-3)
