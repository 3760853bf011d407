"""SavedModel export: the served model takes the dataset's raw uint8 images.

The model carries its own preprocessing, so a client sends 28x28x1 bytes for an
MNIST digit and gets probabilities back; nothing about resizing, channels or
ImageNet statistics leaks into serving code.

Training exports at its end. To export again from a run's best checkpoint (an
interrupted run, or one trained with --noexport):

  python -m trainer.export --run_dir=runs/NAME

The run folder alone is enough: training records the image shape and classes in
dataset.json, so exporting never needs the dataset.
"""
import dataclasses
import json
import os
from typing import Tuple

import tensorflow as tf

from trainer import cli
from trainer.errors import UserError
from trainer.keras_lib import keras

EXPORT_DIR = 'export'
KERAS_MODEL_FILE = 'model.keras'
DATASET_FILE = 'dataset.json'
SIGNATURE = 'serving_default'


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model trained on a dataset takes in and gives out."""
  image_shape: Tuple[int, int, int]
  num_classes: int
  class_names: Tuple[str, ...]


def write_dataset_info(out_dir: str, splits):
  """Records `splits`' image shape and classes in `out_dir`/dataset.json."""
  info = DatasetInfo(tuple(splits.image_shape), splits.num_classes, tuple(splits.class_names))
  with tf.io.gfile.GFile(os.path.join(out_dir, DATASET_FILE), 'w') as f:
    json.dump(dataclasses.asdict(info), f, indent=2)


def read_dataset_info(run_dir: str) -> DatasetInfo:
  path = os.path.join(run_dir, DATASET_FILE)
  if not tf.io.gfile.exists(path):
    raise UserError(f'{run_dir} has no {DATASET_FILE} (the image shape and classes its model '
                    'takes); it was started before runs recorded them: train it again')
  with tf.io.gfile.GFile(path) as f:
    fields = json.load(f)
  return DatasetInfo(tuple(fields['image_shape']), fields['num_classes'],
                     tuple(fields['class_names']))


def export_model(model, out_dir: str) -> str:
  """Writes the SavedModel to `out_dir`/export and the Keras model beside it; returns the former."""
  # A new Model over the same layers and weights, without the optimizer and the loss that
  # `compile` attached: serving needs neither, and a custom loss would make loading the
  # Keras file fail unless the reader passed it in custom_objects.
  model = keras.Model(model.inputs, model.outputs, name=model.name)
  # The SavedModel holds the weights and the serving function only, not Keras' traces of
  # every layer: it writes about 5x and loads about 5x faster. model.keras is the Keras model.
  served = tf.Module()
  served.weights = list(model.weights)
  export_dir = os.path.join(out_dir, EXPORT_DIR)
  tf.saved_model.save(served, export_dir, signatures={SIGNATURE: serving_signature(model)})
  model.save(os.path.join(out_dir, KERAS_MODEL_FILE))
  print(f'Exported SavedModel to {export_dir}')
  return export_dir


def serving_signature(model):
  """uint8 images at the stored shape in; class probabilities and the predicted class out."""
  image_shape = model.input_shape[1:]  # the model takes the images as the dataset stores them
  @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.uint8, name='images')])
  def serve(images):
    probabilities = model(images, training=False)
    return {'probabilities': probabilities,
            'classes': tf.argmax(probabilities, axis=-1, output_type=tf.int32)}
  return serve


def export_run(run_dir: str) -> str:
  """Exports a run folder's best checkpoint into that folder; returns the SavedModel's path."""
  # Imported here: trainer.runs imports trainer.train, which imports this module.
  from trainer import runs  # pylint: disable=import-outside-toplevel
  return export_model(runs.load_best_model(run_dir), run_dir)


if __name__ == '__main__':
  cli.run_on_run_dir(export_run, 'export')
