"""The model carries its preprocessing: uint8 28x28x1 in, float32 probabilities out."""
import json
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from trainer.config import ModelConfig
from trainer.keras_lib import keras
from trainer.model import (
    backbone_of,
    build_model,
    inference_model,
    preprocessing_model,
    stop_augmentation,
    without_augmentation,
)

IMAGE_SIZE = 32


def build_mnist_model(adapter):
  keras.utils.set_random_seed(0)
  return build_model(ModelConfig(image_size=IMAGE_SIZE, adapter=adapter), (28, 28, 1), 10)


@pytest.fixture(scope='module')
def rgb_model():
  return build_mnist_model('rgb')


@pytest.fixture(scope='module')
def conv_model():
  return build_mnist_model('conv')


@pytest.fixture(params=['rgb_model', 'conv_model'])
def model(request):
  return request.getfixturevalue(request.param)


def digits(n=4):
  return np.random.default_rng(0).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)


def test_uint8_digits_in_float32_probabilities_out(model):
  assert model.input.dtype == tf.uint8 and model.input.shape[1:] == (28, 28, 1)
  probabilities = model(digits(), training=False)
  assert probabilities.dtype == tf.float32 and probabilities.shape == (4, 10)
  np.testing.assert_allclose(tf.reduce_sum(probabilities, axis=-1), np.ones(4), rtol=1e-5)


def test_the_resize_to_three_channels_happens_inside_the_model(model):
  seen = preprocessing_model(model)(digits(), training=False)
  assert seen.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
  assert backbone_of(model).input_shape == (None, IMAGE_SIZE, IMAGE_SIZE, 3)


def test_rgb_adapter_matches_densenet_preprocess_input(rgb_model):
  images = digits()
  resized = tf.image.resize(tf.cast(images, tf.float32), (IMAGE_SIZE, IMAGE_SIZE), 'bicubic')
  expected = keras.applications.densenet.preprocess_input(tf.image.grayscale_to_rgb(resized))
  seen = preprocessing_model(rgb_model)(images, training=False)
  np.testing.assert_allclose(seen, expected, atol=1e-4)


def test_conv_adapter_stem_sees_one_channel_and_makes_three(conv_model):
  assert conv_model.get_layer('stem_conv').kernel.shape == (3, 3, 1, 3)
  assert conv_model.get_layer('stem_bn').trainable


def test_three_channel_images_keep_their_colour_through_the_rgb_adapter():
  small = build_model(ModelConfig(image_size=IMAGE_SIZE, adapter='rgb'), (32, 32, 3), 10)
  assert 'gray_to_rgb' not in [layer.name for layer in small.layers]
  colour = np.zeros((1, 32, 32, 3), np.uint8)
  colour[..., 0] = 255  # pure red
  seen = preprocessing_model(small)(colour).numpy()
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(seen[0, 5, 5], (np.array([1, 0, 0]) - mean) / std, atol=1e-4)


def test_augmentation_changes_images_only_in_training():
  augmented = build_model(ModelConfig(image_size=IMAGE_SIZE, augment=True), (28, 28, 1), 10)
  preprocess = preprocessing_model(augmented)
  images = digits()
  np.testing.assert_allclose(preprocess(images, training=False), preprocess(images, training=False))
  assert not np.allclose(preprocess(images, training=True), preprocess(images, training=False))
  assert not np.allclose(augmented(images, training=True), augmented(images, training=True))
  # The same weights without the augmentation: repeatable in training mode too.
  plain = without_augmentation(augmented)
  assert {id(v) for v in plain.weights} == {id(v) for v in augmented.weights}
  np.testing.assert_allclose(plain(images, training=True), plain(images, training=True))
  np.testing.assert_allclose(plain(images, training=False), augmented(images, training=False))
  # Stopped: training-mode calls traced from then on see the images as they are.
  assert stop_augmentation(augmented) and not stop_augmentation(augmented)
  np.testing.assert_allclose(preprocess(images, training=True), preprocess(images, training=False))
  assert not stop_augmentation(plain)


def first_batchnorm_step(model):
  """The backbone's first BatchNorm moving mean before and after one training-mode call, and
  the mean of that call's batch at its input."""
  backbone = backbone_of(model)
  first_bn = backbone.get_layer('conv1/bn')
  images = digits()
  seen = keras.Model(backbone.input,
                     backbone.get_layer('conv1/conv').output)(preprocessing_model(model)(images))
  before = first_bn.moving_mean.numpy()
  model(images, training=True)
  return before, first_bn.moving_mean.numpy(), np.mean(seen, axis=(0, 1, 2))


def test_backbone_batchnorm_moves_at_the_set_momentum(rgb_model):
  momentum = ModelConfig().batchnorm_momentum
  assert momentum != 0.99  # not what keras.applications builds DenseNet121 with
  before, after, batch_mean = first_batchnorm_step(rgb_model)
  np.testing.assert_allclose(after, momentum * before + (1 - momentum) * batch_mean, atol=1e-5)


def test_frozen_batchnorm_keeps_its_statistics_and_trains_its_scale():
  model = build_model(ModelConfig(image_size=IMAGE_SIZE, freeze_batchnorm=True), (28, 28, 1), 10)
  before, after, _ = first_batchnorm_step(model)
  np.testing.assert_array_equal(after, before)
  # Frozen statistics, not frozen weights: the Keras guide's way.
  assert backbone_of(model).get_layer('conv1/bn').gamma.trainable


def test_the_conv_stem_starts_by_copying_the_gray_digit_to_all_three_channels(conv_model):
  assert ModelConfig().stem_init == 'copy'  # what conv_model was built with
  stem = keras.Model(conv_model.input, conv_model.get_layer('stem_conv').output)
  resized = keras.Model(conv_model.input, conv_model.get_layer('resize').output)
  images = digits()
  np.testing.assert_allclose(stem(images), np.repeat(resized(images), 3, axis=-1), atol=1e-6)


def test_the_inference_model_is_the_trained_one_in_keras_layers_alone(conv_model, tmp_path):
  """What model.keras holds: keras.models.load_model needs none of trainer's classes (the
  matmul resize, the augmentation, the stem's CopyChannels initializer) to read it."""
  config = ModelConfig(image_size=IMAGE_SIZE, adapter='conv', augment=True)
  plain = inference_model(config, conv_model)
  assert backbone_of(plain) is backbone_of(conv_model)
  images = digits()
  np.testing.assert_allclose(plain(images, training=False),
                             conv_model(images, training=False),
                             atol=1e-5)
  plain.save(tmp_path / 'model.keras')
  with zipfile.ZipFile(tmp_path / 'model.keras') as saved:
    config_json = saved.read('config.json').decode()
  assert 'trainer>' not in config_json and 'Augmentation' not in config_json
  assert 'trainer>' in json.dumps(keras.saving.serialize_keras_object(conv_model))  # as trained
