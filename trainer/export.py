"""SavedModel export: the served model takes the dataset's raw uint8 images.

The model carries its own preprocessing, so a client sends 28x28x1 bytes for an
MNIST digit and gets probabilities back; nothing about resizing, channels or
ImageNet statistics leaks into serving code.
"""
import os

import tensorflow as tf

EXPORT_DIR = 'export'
KERAS_MODEL_FILE = 'model.keras'


def export_model(model, export_dir: str, splits) -> str:
  """Writes a SavedModel to `export_dir` and the Keras model beside it; returns `export_dir`."""
  signature = serving_signature(model, splits.image_shape)
  tf.saved_model.save(model, export_dir, signatures={'serving_default': signature})
  model.save(os.path.join(os.path.dirname(export_dir), KERAS_MODEL_FILE), include_optimizer=False)
  print(f'Exported SavedModel to {export_dir}')
  return export_dir


def serving_signature(model, image_shape):
  @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.uint8, name='images')])
  def serve(images):
    probabilities = model(images, training=False)
    return {'probabilities': probabilities,
            'classes': tf.argmax(probabilities, axis=-1, output_type=tf.int32)}
  return serve
