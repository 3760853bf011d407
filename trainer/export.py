"""SavedModel export: the served model takes the dataset's raw uint8 images.

The model carries its own preprocessing, so a client sends 28x28x1 bytes for an
MNIST digit and gets probabilities back; nothing about resizing, channels or
ImageNet statistics leaks into serving code.

Training exports its best checkpoint at its end, in float32. To export again from a
run's best checkpoint (an interrupted run, or one trained with --noexport):

  python -m trainer.export --run_dir=runs/NAME

The run folder alone is enough: training records the image shape and classes in
dataset.json, so exporting never needs the dataset.
"""
# First: trainer.cli sets TensorFlow's environment, which TensorFlow reads as it loads.
from trainer import cli  # isort: skip

from typing import Dict, List

import tensorflow as tf
from absl import logging

from trainer import runs
from trainer.config import TrainConfig
from trainer.keras_lib import keras

SIGNATURE = 'serving_default'

cli.define_flags(TrainConfig, __name__, names=['run_dir'])


def export_model(model: keras.Model, out_dir: str) -> str:
  """Writes the SavedModel to `out_dir`/export (on Vertex AI: AIP_MODEL_DIR) and the Keras model
  to `out_dir`; returns the SavedModel's folder."""
  # A new Model over the same layers and weights, without the optimizer and the loss that
  # `compile` attached: serving needs neither, and a custom loss would make loading the
  # Keras file fail unless the reader passed it in custom_objects.
  model = keras.Model(model.inputs, model.outputs, name=model.name)
  # The SavedModel holds the weights and the serving function only, not Keras' traces of
  # every layer: it writes about 5x and loads about 5x faster. model.keras is the Keras model.
  served = tf.Module()
  served.weights = list(model.weights)
  export_dir = runs.export_dir(out_dir)
  tf.saved_model.save(served, export_dir, signatures={SIGNATURE: serving_signature(model)})
  model.save(runs.path(out_dir, runs.KERAS_MODEL_FILE))
  logging.info('Exported SavedModel to %s', export_dir)
  return export_dir


def serving_signature(model: keras.Model) -> tf.types.experimental.PolymorphicFunction:
  """uint8 images at the stored shape in; class probabilities and the predicted class out."""
  image_shape = model.input_shape[1:]  # the model takes the images as the dataset stores them

  @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.uint8, name='images')])
  def serve(images: tf.Tensor) -> Dict[str, tf.Tensor]:
    probabilities = model(images, training=False)
    return {
        'probabilities': probabilities,
        'classes': tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    }

  return serve


def export_run(run_dir: str) -> str:
  """Exports a run folder's best checkpoint into that folder, computing in float32 whatever
  precision trained it; returns the SavedModel's path."""
  # float32 because the machines that serve may lack fast bfloat16 or float16 (a CPU without
  # them computes those in software, several times slower), and so the model that training
  # exports is the one this command exports later from the same checkpoint.
  trained_policy = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy('float32')
  try:
    model = runs.load_best_model(run_dir)
  finally:
    keras.mixed_precision.set_global_policy(trained_policy)
  return export_model(model, run_dir)


def main(_: List[str]) -> None:
  print(export_run(cli.required_flag('run_dir')))


def entry_point() -> None:
  """The console script (see setup.cfg); python -m trainer.export runs it too."""
  cli.run(main)


if __name__ == '__main__':
  entry_point()
