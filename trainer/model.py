"""DenseNet121 with its preprocessing inside: uint8 images in, float32 class probabilities out.

    uint8 HxWxC -> scale to [0, 1] -> augment (training only) -> resize -> adapter
                -> DenseNet121 backbone (nested model) -> head -> float32 softmax

Every step runs in the graph, on the accelerator, and travels with an exported model.
The preprocessing layers are float32 even under mixed precision: they are cheap,
and resizing in float16 would round the pixels the pretrained weights expect.
"""
from typing import Tuple

import numpy as np
import tensorflow as tf

from trainer.config import ADAPTERS, HEADS, ModelConfig
from trainer.keras_lib import keras
from trainer.resize import MatmulResize

BACKBONE = 'densenet121'  # the name keras.applications gives the nested model
BACKBONE_INPUT = 'backbone_input'  # the adapter's last layer: what the backbone sees
SCALE = 'scale'  # the first layer: uint8 to [0, 1]
AUGMENT = 'augment'
RESIZE = 'resize'  # the first layer after the augmentation
# keras.applications.densenet.preprocess_input ("torch" mode) on [0, 1] pixels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_model(config: ModelConfig, input_shape: Tuple[int, int, int],
                num_classes: int) -> keras.Model:
  """The whole classifier; the backbone starts random, see trainer/weights.py for ImageNet."""
  # Two matrix products, not tf.image.resize: the same values, and XLA compiles them
  # (it has no ResizeBicubic kernel).
  return _assemble(config,
                   input_shape,
                   num_classes,
                   resize=MatmulResize,
                   augment=config.augment,
                   stem_init=config.stem_init,
                   backbone=lambda: _densenet(config))


def inference_model(config: ModelConfig, trained: keras.Model) -> keras.Model:
  """`trained` (built by build_model from `config`) rebuilt from built-in Keras layers only,
  with its weights, so that keras.models.load_model reads it saved without trainer's code.

  keras.layers.Resizing resizes to MatmulResize's values (to float rounding) where XLA does
  not matter; inference never augments; and a trained stem's initializer no longer matters,
  so Keras's own stands in for CopyChannels. The backbone is `trained`'s own.
  """
  model = _assemble(config,
                    trained.input.shape[1:],
                    trained.output.shape[-1],
                    resize=keras.layers.Resizing,
                    augment=False,
                    stem_init='random',
                    backbone=lambda: backbone_of(trained))
  for layer in model.layers:
    if layer.weights and layer.name != BACKBONE:
      layer.set_weights(trained.get_layer(layer.name).get_weights())
  return model


def _assemble(config, input_shape, num_classes, resize, augment, stem_init, backbone):
  images = keras.Input(shape=input_shape, dtype='uint8', name='images')
  x = keras.layers.Rescaling(1 / 255, dtype='float32', name=SCALE)(images)
  if augment:
    x = augmentation(config)(x)
  x = resize(config.image_size,
             config.image_size,
             config.interpolation,
             dtype='float32',
             name=RESIZE)(x)
  x = _adapter(x, config.adapter, stem_init, channels=input_shape[-1])
  # By default called without `training=`, unlike the Keras fine-tuning guide (which keeps
  # BatchNorm in inference mode after unfreezing): BatchNormalization then follows
  # `trainable`, so a frozen backbone normalises with its ImageNet statistics while a
  # fine-tuned one adapts them to the new domain, which for 28x28 digits is far from
  # ImageNet. --freeze_batchnorm is the guide's way (benchmarks/RESULTS.md compares them).
  x = backbone()(x, training=False) if config.freeze_batchnorm else backbone()(x)
  x = _head(config.head)(x)
  if config.dropout:
    x = keras.layers.Dropout(config.dropout, name='dropout')(x)
  x = keras.layers.Dense(num_classes, name='logits')(x)
  probabilities = keras.layers.Activation('softmax', dtype='float32', name='probabilities')(x)
  return keras.Model(images, probabilities, name=f'densenet121_{config.adapter}')


def _densenet(config):
  backbone = keras.applications.DenseNet121(include_top=False,
                                            weights=None,
                                            input_shape=(config.image_size, config.image_size, 3))
  # Read at every training step, so setting it after the build takes effect.
  for layer in backbone.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.momentum = config.batchnorm_momentum
  return backbone


def augmentation(config: ModelConfig) -> keras.Sequential:
  """Random rotation, zoom and shift at the stored size (cheap), active only in training."""
  fill = dict(fill_mode='constant', fill_value=0.0, dtype='float32')
  return Augmentation([
      keras.layers.RandomRotation(config.rotation_degrees / 360, **fill),
      keras.layers.RandomZoom((-config.zoom, config.zoom), **fill),
      keras.layers.RandomTranslation(config.translate, config.translate, **fill),
  ],
                      name=AUGMENT)


@keras.saving.register_keras_serializable(package='trainer')
class Augmentation(keras.Sequential):
  """Its layers, in training only, and only while `enabled`: a step traced once it is off
  trains on the images as they are (see `stop_augmentation`)."""
  enabled = True

  def call(self, inputs, training=None, mask=None):
    if not self.enabled:
      return inputs
    return super().call(inputs, training=training, mask=mask)


def stop_augmentation(model: keras.Model) -> bool:
  """Turns `model`'s augmentation off for the steps traced from now on; False if it had none
  left to turn off."""
  layer = next((layer for layer in model.layers if layer.name == AUGMENT), None)
  if layer is None or not layer.enabled:
    return False
  layer.enabled = False
  return True


def _adapter(x, adapter, stem_init, channels):
  """Maps [0, 1] images with `channels` channels to the 3 channels DenseNet121 takes."""
  if adapter == 'rgb':
    # Gray copied to three channels (the article's first method), colour passed
    # through, then ImageNet's mean and std: the statistics the weights were trained on.
    if channels == 1:
      x = keras.layers.Concatenate(name='gray_to_rgb', dtype='float32')([x, x, x])
    return keras.layers.Normalization(mean=IMAGENET_MEAN,
                                      variance=[s * s for s in IMAGENET_STD],
                                      dtype='float32',
                                      name=BACKBONE_INPUT)(x)
  if adapter == 'conv':
    # A learned stem (the article's second method): C channels in, 3 out.
    initializer = CopyChannels() if stem_init == 'copy' else 'glorot_uniform'
    x = keras.layers.Conv2D(3, 3, padding='same', kernel_initializer=initializer,
                            name='stem_conv')(x)
    x = keras.layers.BatchNormalization(name='stem_bn')(x)
    return keras.layers.ReLU(name=BACKBONE_INPUT)(x)
  raise ValueError(f'unknown adapter {adapter!r}; expected one of {ADAPTERS}')


@keras.saving.register_keras_serializable(package='trainer')
class CopyChannels(keras.initializers.Initializer):
  """A conv kernel whose output channel o is input channel o mod C at the centre tap: gray
  copied to three channels, colour passed through. A stem that starts so shows the backbone
  the image itself, normalised by the stem's BatchNorm (the ReLU clips the below-average
  background to 0), close to what the rgb adapter shows it, instead of three random filterings
  of the image that the ReLU half blanks out."""

  def __call__(self, shape, dtype=None, **kwargs):
    rows, cols, channels_in, channels_out = shape
    kernel = np.zeros(shape, np.float32)
    for out in range(channels_out):
      kernel[rows // 2, cols // 2, out % channels_in, out] = 1.0
    return tf.constant(kernel, dtype=dtype or tf.float32)


def _head(head):
  if head == 'gap':
    return keras.layers.GlobalAveragePooling2D(name='pool')
  if head == 'flatten':
    return keras.layers.Flatten(name='flatten')
  raise ValueError(f'unknown head {head!r}; expected one of {HEADS}')


def backbone_of(model: keras.Model) -> keras.Model:
  return model.get_layer(BACKBONE)


def preprocessing_model(model: keras.Model) -> keras.Model:
  """The part of `model` before the backbone: shows the images as the backbone sees them."""
  return keras.Model(model.input, model.get_layer(BACKBONE_INPUT).output, name='preprocessing')


def without_augmentation(model: keras.Model) -> keras.Model:
  """`model` with its layers and weights but no augmentation, even in training mode."""
  if AUGMENT not in [layer.name for layer in model.layers]:
    return model
  images = keras.Input(model.input.shape[1:], dtype=model.input.dtype, name='images')
  after_augmentation = keras.Model(model.get_layer(RESIZE).input, model.output)
  return keras.Model(images, after_augmentation(model.get_layer(SCALE)(images)), name='plain')


def set_backbone_trainable(model: keras.Model, trainable: bool) -> None:
  """Freezes or unfreezes the backbone; takes effect at the next compile()."""
  backbone_of(model).trainable = trainable
