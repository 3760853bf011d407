"""MatmulResize: tf.image.resize's values as two matmuls, which XLA compiles."""

import numpy as np
import pytest
import tensorflow as tf

from trainer import export
from trainer.config import DatasetInfo
from trainer.keras_lib import keras
from trainer.resize import INTERPOLATIONS, MatmulResize, interpolation_matrix

PROJECT_INTERPOLATIONS = ('bicubic', 'bilinear', 'nearest', 'area')  # trainer.model's choices
# (input height, width), (output height, width): MNIST to the smallest and the default
# DenseNet sizes, the same size, non-square both ways, and a shrink.
SIZES = [((28, 28), (32, 32)), ((28, 28), (64, 64)), ((32, 32), (32, 32)), ((28, 20), (40, 64)),
         ((64, 48), (28, 20))]
TOLERANCE = 1e-5  # float32 rounding of different summation orders; measured <= 4e-7


def random_images(shape, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.mark.parametrize('interpolation', INTERPOLATIONS)
@pytest.mark.parametrize('in_size, out_size', SIZES, ids=lambda size: 'x'.join(map(str, size)))
def test_matches_resizing_and_tf_image_resize(interpolation, in_size, out_size):
  images = random_images((3, *in_size, 3))
  resized = MatmulResize(*out_size, interpolation)(images)
  assert resized.dtype == tf.float32 and resized.shape == (3, *out_size, 3)
  resizing = keras.layers.Resizing(*out_size, interpolation=interpolation)
  np.testing.assert_allclose(resized, resizing(images), rtol=0, atol=TOLERANCE)
  np.testing.assert_allclose(resized,
                             tf.image.resize(images, out_size, interpolation),
                             rtol=0,
                             atol=TOLERANCE)


@pytest.mark.parametrize('interpolation', PROJECT_INTERPOLATIONS)
def test_the_same_size_is_the_identity(interpolation):
  np.testing.assert_array_equal(interpolation_matrix(32, 32, interpolation), np.eye(32))


@pytest.mark.parametrize('shape', [(1, 28, 28, 1), (5, 28, 28, 4), (28, 28, 3)],
                         ids=['one_gray', 'five_4_channel', 'unbatched'])
def test_any_batch_and_channel_count(shape):
  images = random_images(shape)
  resized = MatmulResize(64, 64, 'bicubic')(images)
  assert resized.shape == (*shape[:-3], 64, 64, shape[-1])
  np.testing.assert_allclose(resized,
                             tf.image.resize(images, (64, 64), 'bicubic'),
                             rtol=0,
                             atol=TOLERANCE)


@pytest.mark.parametrize('interpolation', PROJECT_INTERPOLATIONS)
def test_compiles_under_xla(interpolation):
  images = tf.constant(random_images((4, 28, 28, 1)))
  layer = MatmulResize(64, 64, interpolation)
  compiled = tf.function(layer, jit_compile=True)
  np.testing.assert_allclose(compiled(images),
                             tf.image.resize(images, (64, 64), interpolation),
                             rtol=0,
                             atol=TOLERANCE)


@pytest.mark.parametrize('interpolation, op', [('bicubic', 'ResizeBicubic'),
                                               ('area', 'ResizeArea')])
def test_resizing_does_not_compile_under_xla(interpolation, op):
  # Why MatmulResize exists: XLA has no kernel for these ops, so a model resizing with
  # Resizing cannot be jit-compiled (bilinear and nearest have kernels and compile).
  # This also shows jit_compile=True is enforced here, so the test above means something.
  compiled = tf.function(keras.layers.Resizing(64, 64, interpolation=interpolation),
                         jit_compile=True)
  with pytest.raises(tf.errors.InvalidArgumentError, match=op):
    compiled(tf.zeros((1, 28, 28, 1)))


def test_rejects_an_unknown_interpolation_and_an_unknown_size():
  with pytest.raises(ValueError, match='unknown interpolation'):
    MatmulResize(64, 64, 'cubic')
  with pytest.raises(ValueError, match='static input height and width'):
    MatmulResize(64, 64)(keras.Input((None, None, 1)))


def uint8_digit_classifier() -> keras.Model:
  """trainer.model's preprocessing and a Dense head: uint8 28x28x1 in, probabilities out."""
  keras.utils.set_random_seed(0)
  images = keras.Input((28, 28, 1), dtype='uint8', name='images')
  x = keras.layers.Rescaling(1 / 255, dtype='float32', name='scale')(images)
  x = MatmulResize(32, 32, 'bicubic', dtype='float32', name='resize')(x)
  x = keras.layers.Flatten()(x)
  probabilities = keras.layers.Dense(10, activation='softmax', name='probabilities')(x)
  return keras.Model(images, probabilities)


@pytest.fixture(scope='module')
def digits() -> np.ndarray:
  return np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)


def test_a_uint8_model_compiles_under_xla_whole(digits):
  model = uint8_digit_classifier()
  compiled = tf.function(lambda images: model(images, training=False), jit_compile=True)
  np.testing.assert_allclose(compiled(tf.constant(digits)), model(digits), rtol=0, atol=1e-6)


def test_exported_savedmodel_serves_uint8_and_a_saved_model_loads(tmp_path, digits):
  model = uint8_digit_classifier()
  expected = model(digits, training=False).numpy()
  export_dir = export.export_model(model, str(tmp_path / 'export'),
                                   DatasetInfo((28, 28, 1), 10, tuple(str(i) for i in range(10))))

  serve = tf.saved_model.load(export_dir).signatures[export.UINT8_SIGNATURE]
  spec = serve.structured_input_signature[1][export.IMAGES]
  assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 28, 28, 1]
  served = serve(images=tf.constant(digits))
  np.testing.assert_allclose(served['probabilities'], expected, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(served['classes'], expected.argmax(axis=-1))

  # No custom_objects: importing trainer.resize registered the layer as trainer>MatmulResize.
  model.save(tmp_path / 'model.keras')
  loaded = keras.models.load_model(tmp_path / 'model.keras')
  resize = loaded.get_layer('resize')
  assert isinstance(resize, MatmulResize)
  assert (resize.height, resize.width, resize.interpolation) == (32, 32, 'bicubic')
  np.testing.assert_allclose(loaded(digits, training=False), expected, rtol=0, atol=1e-6)


def test_a_uint8_model_converts_to_tflite_and_runs_at_any_batch(digits):
  # With the resize as einsums, the converter succeeded but the interpreter refused the model
  # ("BytesRequired number of elements overflowed") over the einsums' reshapes of the batch.
  model = uint8_digit_classifier()
  serve = tf.function(lambda images: model(images, training=False),
                      input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.uint8)])
  converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()],
                                                              model)
  interpreter = tf.lite.Interpreter(model_content=converter.convert())
  for batch in (digits, digits[:1]):
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]['index'], batch.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]['index'], batch)
    interpreter.invoke()
    probabilities = interpreter.get_tensor(interpreter.get_output_details()[0]['index'])
    np.testing.assert_allclose(probabilities, model(batch), rtol=0, atol=1e-6)
