"""Image resizing as two matrix products, so models that resize compile under XLA.

XLA has no kernel for ResizeBicubic or ResizeArea (nor ScaleAndTranslate, behind
lanczos, gaussian and mitchellcubic), so `tf.function(jit_compile=True)` fails on a model
that holds keras.layers.Resizing with those methods. Every tf.image.resize method without
antialiasing is linear and separable: each output row is a fixed mix of input rows, each
output column of input columns. From a fixed size to a fixed size it is therefore

    out = R @ image @ C^T    (per image and channel; R: out_h x in_h, C: out_w x in_w)

R and C are found once, when the layer is built, by letting tf.image.resize itself resize
the one-hot basis along each axis, so the kernel, its boundary handling and the pixel
centres are tf.image's own and the results match tf.image.resize (and Resizing) to float
rounding. The cost is two small matmuls per image: for 28x28 -> 64x64 and C channels,
64*28*28*C + 64*64*28*C multiply-adds (about 165k per channel), as two batched matmuls that
any accelerator runs well. The matrices are constants, not weights: checkpoints and weight
files are the same as with Resizing.

On GPUs that allow TensorFloat-32 (TensorFlow's default on Ampere and later), the matmuls
run in TF32 like the rest of the model's float32 matmuls and convolutions: about 1e-3
relative error instead of 1e-7.
"""
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from trainer.keras_lib import keras

# tf.image.ResizeMethod's values: all linear without antialiasing.
INTERPOLATIONS = ('bicubic', 'bilinear', 'nearest', 'area', 'lanczos3', 'lanczos5', 'gaussian',
                  'mitchellcubic')


def interpolation_matrix(in_size: int, out_size: int, interpolation: str) -> np.ndarray:
  """The (out_size, in_size) matrix that tf.image.resize applies along one axis."""
  # Channel i of this 1-pixel-wide image is the i-th one-hot column along the height, so
  # resizing the height gives column i of the matrix in channel i. Width 1 -> 1 is the
  # identity for every method.
  basis = np.eye(in_size, dtype=np.float32)[np.newaxis, :, np.newaxis, :]
  # Built from Keras' symbolic graphs or a tf.function too; the matrix is a constant.
  with tf.init_scope():
    resized = tf.image.resize(basis, (out_size, 1), method=interpolation, antialias=False)
    return resized.numpy()[0, :, 0, :]


@keras.saving.register_keras_serializable(package='trainer')
class MatmulResize(keras.layers.Layer):
  """keras.layers.Resizing(height, width, interpolation) as two matmuls, for any XLA device.

  Takes channels-last images of a static height and width, batched (4-D) or not (3-D),
  with any number of channels, and returns them resized in the layer's compute dtype.
  """

  def __init__(self,
               height: int,
               width: int,
               interpolation: str = 'bilinear',
               **kwargs: Any) -> None:
    super().__init__(**kwargs)
    if interpolation not in INTERPOLATIONS:
      raise ValueError(f'unknown interpolation {interpolation!r}; '
                       f'expected one of {INTERPOLATIONS}')
    self.height = height
    self.width = width
    self.interpolation = interpolation
    self._rows: Optional[np.ndarray] = None
    self._columns: Optional[np.ndarray] = None

  def build(self, input_shape):
    in_height, in_width = tf.TensorShape(input_shape)[-3:-1].as_list()
    if in_height is None or in_width is None:
      raise ValueError(f'{self.name} needs a static input height and width, got {input_shape}')
    self._rows = interpolation_matrix(in_height, self.height, self.interpolation)
    self._columns = interpolation_matrix(in_width, self.width, self.interpolation)
    super().build(input_shape)

  def call(self, inputs):
    x = tf.cast(inputs, self.compute_dtype)
    rows = tf.constant(self._rows, self.compute_dtype)
    columns = tf.constant(self._columns, self.compute_dtype)
    # Broadcast matmuls, not tf.einsum: TFLite's converter wraps an einsum in reshapes whose
    # shapes its interpreter cannot size under a dynamic batch, and refuses the model.
    x = tf.linalg.matmul(columns, x)  # (..., in_h, in_w, C) -> (..., in_h, width, C)
    x = tf.linalg.matmul(rows, _swap_height_and_width(x))  # -> (..., width, height, C)
    return _swap_height_and_width(x)

  def compute_output_shape(self, input_shape):
    shape = tf.TensorShape(input_shape).as_list()
    shape[-3:-1] = [self.height, self.width]
    return tf.TensorShape(shape)

  def get_config(self):
    return {
        **super().get_config(), 'height': self.height,
        'width': self.width,
        'interpolation': self.interpolation
    }


def _swap_height_and_width(images: tf.Tensor) -> tf.Tensor:
  """(..., H, W, C) -> (..., W, H, C)."""
  rank = images.shape.rank
  return tf.transpose(images, [*range(rank - 3), rank - 2, rank - 3, rank - 1])
