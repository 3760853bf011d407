"""The exported model: a SavedModel with two signatures, and the Keras and TFLite files.

  serving_default  image_bytes: string [batch], the bytes of PNG, JPEG, GIF or BMP files
  images_uint8     images: uint8 [batch, H, W, C], images as the dataset stores them
                   (28x28x1 for MNIST)

Both return the same three outputs, a row per image:

  probabilities  float32 [batch, classes]
  classes        int32 [batch], the most probable class's index
  class_names    string [batch], its name (from the run's dataset.json)

serving_default takes encoded images because that is what the clients that call a model by
its default signature send: TF Serving's REST API and Vertex AI prediction carry binary
data as {"b64": ...}, which they decode only into string inputs, and Vertex AI's predict
calls the default signature. The signature does the conversion itself, in the graph
(trainer/images.py): decode, transparency, gray or RGB, scale to fit the stored shape and,
for a gray model, dark ink on paper turned into light strokes on black as MNIST stores
digits. images_uint8 is the model itself, for clients that already hold the dataset's
format, and what TFLite and ONNX convert (they have no image decoders).

The model computes in float32 whatever precision trained it. Training exports its best
checkpoint at its end; to export again (an interrupted run, one trained with --noexport,
or to write model.tflite):

  python -m trainer.export --run_dir=runs/NAME [--tflite=float32|dynamic_range]

The run folder alone is enough: training records the image shape and classes in
dataset.json, so exporting never needs the dataset. The SavedModel goes to RUN/export, or
on Vertex AI to AIP_MODEL_DIR (see trainer/runs.py); model.keras and model.tflite stay in
the run folder.
"""
# First: trainer.cli sets TensorFlow's environment, which TensorFlow reads as it loads.
from trainer import cli  # isort: skip

from typing import Dict, List, Optional, Sequence, Tuple

import tensorflow as tf
from absl import logging

from trainer import images, runs
from trainer.config import DatasetInfo, ExportConfig, TrainConfig
from trainer.keras_lib import keras
from trainer.model import inference_model

SERVING_SIGNATURE = 'serving_default'
UINT8_SIGNATURE = 'images_uint8'
IMAGE_BYTES = 'image_bytes'  # serving_default's input
IMAGES = 'images'  # images_uint8's input
PROBABILITIES = 'probabilities'
CLASSES = 'classes'
CLASS_NAMES = 'class_names'

cli.define_flags(TrainConfig, __name__, names=['run_dir'])


def export_run(run_dir: str, tflite: str = 'none') -> str:
  """Exports a run folder's best checkpoint; returns the SavedModel's folder."""
  # float32 because the machines that serve may lack fast bfloat16 or float16 (a CPU without
  # them computes those in software, several times slower), and so the model that training
  # exports is the one this command exports later from the same checkpoint.
  trained_policy = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy('float32')
  try:
    model = runs.load_best_model(run_dir)
    keras_model = inference_model(runs.load_config(run_dir).model, model)
  finally:
    keras.mixed_precision.set_global_policy(trained_policy)
  export_dir = export_model(model, runs.export_dir(run_dir), runs.read_dataset_info(run_dir))
  # Built-in layers only: keras.models.load_model reads it with no trainer code imported.
  keras_model.save(runs.path(run_dir, runs.KERAS_MODEL_FILE))
  if tflite != 'none':
    write_tflite(export_dir, runs.path(run_dir, runs.TFLITE_FILE), tflite)
  return export_dir


def export_model(model: keras.Model, export_dir: str, info: DatasetInfo) -> str:
  """Writes the SavedModel of `model` (uint8 images in, probabilities out) to `export_dir`."""
  # The SavedModel holds the weights and the serving functions only, not Keras' traces of
  # every layer: it writes about 5x and loads about 5x faster.
  served = tf.Module()
  served.weights = list(model.weights)
  tf.saved_model.save(served,
                      export_dir,
                      signatures={
                          SERVING_SIGNATURE: encoded_images_signature(model, info),
                          UINT8_SIGNATURE: uint8_signature(model, info.class_names),
                      })
  logging.info('Exported SavedModel to %s', export_dir)
  return export_dir


def uint8_signature(model: keras.Model,
                    class_names: Sequence[str]) -> tf.types.experimental.PolymorphicFunction:
  """uint8 images at the stored shape in; probabilities, classes and class names out."""
  image_shape = model.input_shape[1:]

  @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.uint8, name=IMAGES)])
  def serve(images: tf.Tensor) -> Dict[str, tf.Tensor]:
    return _classify(model, images, class_names)

  return serve


def encoded_images_signature(model: keras.Model,
                             info: DatasetInfo) -> tf.types.experimental.PolymorphicFunction:
  """Encoded image files in; the same outputs as uint8_signature."""
  image_shape = model.input_shape[1:]

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)])
  def serve(image_bytes: tf.Tensor) -> Dict[str, tf.Tensor]:
    # One at a time: the files differ in size until they are fitted to the stored shape.
    stored = tf.map_fn(lambda encoded: to_dataset_format(encoded, image_shape, info.aspect),
                       image_bytes,
                       fn_output_signature=tf.TensorSpec(image_shape, tf.uint8))
    return _classify(model, stored, info.class_names)

  return serve


def to_dataset_format(encoded: tf.Tensor,
                      image_shape: Tuple[int, int, int],
                      aspect: Optional[str] = None) -> tf.Tensor:
  """One image file's bytes as the model's input: uint8 at `image_shape`.

  Where the trainer made the dataset from files (`aspect`: a folder, a varying-size
  dataset), exactly as it did. Otherwise the dataset's images were made by others, and a
  file is fitted whole (padded); for gray datasets, which store light on a black background
  (MNIST, Fashion-MNIST) while people write dark on light, it is inverted where its border
  is the lighter and stretched to the full range: without that, a photographed or drawn
  digit is a stranger to the model (docs/serving.md has the measurement).
  """
  height, width, channels = image_shape
  if aspect:
    return images.decode_image(encoded, height, width, channels, aspect=aspect)
  adjust = _light_on_dark if channels == 1 else None
  return images.decode_image(encoded, height, width, channels, aspect='pad', adjust=adjust)


def _light_on_dark(image: tf.Tensor) -> tf.Tensor:
  return images.autocontrast(images.invert_if_light_background(image))


def _classify(model, images_uint8, class_names):
  probabilities = model(images_uint8, training=False)
  classes = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
  return {
      PROBABILITIES: probabilities,
      CLASSES: classes,
      CLASS_NAMES: tf.gather(tf.constant(list(class_names)), classes),
  }


def write_tflite(export_dir: str, path: str, optimization: str) -> str:
  """Converts the SavedModel's images_uint8 signature to a TFLite file at `path`.

  float32 keeps the weights as they are; dynamic_range (tf.lite.Optimize.DEFAULT) stores
  them in 8 bits, about 4x smaller, at the cost of small changes to the probabilities.
  """
  converter = tf.lite.TFLiteConverter.from_saved_model(export_dir, signature_keys=[UINT8_SIGNATURE])
  if optimization == 'dynamic_range':
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(converter.convert())
  logging.info('Wrote %s TFLite model to %s', optimization, path)
  return path


def main(_: List[str]) -> None:
  config = cli.config_from_flags(ExportConfig)
  run_dir = cli.required_flag('run_dir')
  with runs.resources_as_user_errors(run_dir, 'the export is written again'):
    print(export_run(run_dir, config.tflite))


def entry_point() -> None:
  """The console script (see setup.cfg); python -m trainer.export runs it too."""
  # Only here, not on import: trainer.main imports this module, and must not take --tflite.
  cli.define_flags(ExportConfig, __name__)
  cli.run(main)


if __name__ == '__main__':
  entry_point()
