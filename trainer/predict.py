"""Classifies image files with an exported model, as a server running it would.

  python -m trainer.predict --model=runs/NAME/export digit.png photo.jpg
  python -m trainer.predict --model=runs/NAME/export --json *.png

Each file's bytes go to the export's serving_default signature, the one TF Serving and
Vertex AI call, which turns them into the dataset's format in the graph (trainer/export.py):
so this command and a served model give the same answer for the same file. PNG (8 or 16
bits), JPEG, GIF and BMP files go as they are; other formats Pillow reads (TIFF, WebP, ...)
are converted to PNG first, as a client of a served model would have to.

Here, before the model loads, each file is checked: that it is an image, under Pillow's
decompression-bomb limit of about 89 megapixels, and not of float or 32-bit pixels, whose
files do not record which value is white.
"""
# First: trainer.cli sets TensorFlow's environment, which TensorFlow reads as it loads.
from trainer import cli  # isort: skip

import dataclasses
import io
import json
import os
import warnings
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps, UnidentifiedImageError

from trainer import runs
from trainer.config import setting
from trainer.errors import UserError
from trainer.export import CLASS_NAMES, IMAGE_BYTES, PROBABILITIES, SERVING_SIGNATURE

BATCH_SIZE = 64
# What tf.io.decode_image reads (Pillow's names for them): sent as they are.
GRAPH_FORMATS = ('PNG', 'JPEG', 'GIF', 'BMP')
# Pillow modes a PNG holds as they are; others are converted to RGB(A) first.
PNG_MODES = ('1', 'L', 'LA', 'P', 'RGB', 'RGBA', 'I;16')
# Pixels whose white level the file does not record: image editors write 1.0, numpy
# arrays 255, widened 16-bit data 65535, scientific cameras physical units. Any guess
# would give a confident wrong answer, so these are refused.
WHITE_LEVEL_UNKNOWN = {'F': 'floating-point', 'I': '32-bit or signed integer'}


def load_signature(model_dir: str) -> tf.types.experimental.ConcreteFunction:
  """The export's serving_default signature, which takes encoded image files."""
  if not tf.saved_model.contains_saved_model(model_dir):
    raise UserError(f'{model_dir} is not a SavedModel (no saved_model.pb); give the export '
                    'folder of a run, e.g. --model=runs/NAME/export')
  run_dir = runs.run_dir_of_export(model_dir) or 'runs/NAME'
  reexport = f'export it again with python -m trainer.export --run_dir={run_dir}'
  try:
    signature = tf.saved_model.load(model_dir).signatures.get(SERVING_SIGNATURE)
  # A damaged export fails in any of these, from deep inside the loader.
  except (OSError, ValueError, IndexError, tf.errors.OpError) as e:
    reason = ' '.join(str(e).split())[:200] or type(e).__name__
    raise UserError(f'{model_dir} is a damaged export ({type(e).__name__}: {reason}); '
                    f'{reexport}') from None
  spec = None if signature is None else signature.structured_input_signature[1].get(IMAGE_BYTES)
  if spec is None or spec.dtype != tf.string or spec.shape.rank != 1:
    raise UserError(f'{model_dir} is a SavedModel but not one that this version of '
                    f'trainer.export wrote (no {SERVING_SIGNATURE} signature taking '
                    f'{IMAGE_BYTES}); {reexport}')
  return signature


def read_image(path: str) -> bytes:
  """What to send for the image file at `path`: its bytes, or the image as PNG."""
  if os.path.isdir(path):
    raise UserError(f'{path} is a folder, not an image; give the image files in it, e.g. '
                    f'{os.path.join(path, "*.png")}')
  if not os.path.isfile(path):
    raise UserError(f'{path} does not exist; give paths of PNG or JPEG files')
  with open(path, 'rb') as f:
    encoded = f.read()
  try:
    with warnings.catch_warnings():
      # Pillow only warns between its limit and twice it, then decodes; no digit is that large.
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      image = Image.open(io.BytesIO(encoded))
      image.load()  # decode now, so a broken file fails here rather than in the model
  except (Image.DecompressionBombError, Image.DecompressionBombWarning):
    raise UserError(f'{path} is too large: over {Image.MAX_IMAGE_PIXELS:,} pixels, Pillow\'s '
                    'limit against decompression bombs; crop it close to the digit or '
                    'shrink it') from None
  except (UnidentifiedImageError, OSError) as e:
    raise UserError(f'{path} is not a readable image ({e}); give PNG or JPEG files') from None
  if image.mode in WHITE_LEVEL_UNKNOWN:
    raise UserError(f'{path} has {WHITE_LEVEL_UNKNOWN[image.mode]} pixels, whose white level '
                    'the file does not record; save it as an 8- or 16-bit PNG')
  return encoded if image.format in GRAPH_FORMATS else _as_png(image)


def _as_png(image: Image.Image) -> bytes:
  """`image` upright as a PNG, at 16 bits if it has them, its transparency kept."""
  image = ImageOps.exif_transpose(image)
  if image.mode.startswith('I;16') and image.mode != 'I;16':  # e.g. big-endian TIFF data
    image = Image.fromarray(np.asarray(image).astype(np.uint16))
  elif image.mode not in PNG_MODES:
    image = image.convert('RGBA' if image.has_transparency_data else 'RGB')
  out = io.BytesIO()
  image.save(out, 'PNG')
  return out.getvalue()


def predict_files(model_dir: str, paths: Sequence[str]) -> List[dict]:
  """One {'file', 'class', 'class_name', 'probability', 'probabilities'} per path."""
  if not paths:
    raise UserError('no image files given; list them after the flags, e.g. '
                    'python -m trainer.predict --model=runs/NAME/export digit.png')
  # Every file is read before the (slower) model loads: a bad one fails the command early.
  files = [read_image(path) for path in paths]
  signature = load_signature(model_dir)
  predictions = []
  for start in range(0, len(files), BATCH_SIZE):
    outputs = signature(**{IMAGE_BYTES: tf.constant(files[start:start + BATCH_SIZE])})
    for probabilities, name in zip(outputs[PROBABILITIES].numpy(), outputs[CLASS_NAMES].numpy()):
      index = int(probabilities.argmax())
      predictions.append({
          'class': index,
          'class_name': name.decode(),
          'probability': float(probabilities[index]),
          'probabilities': [float(p) for p in probabilities]
      })
  return [{'file': path, **p} for path, p in zip(paths, predictions)]


def format_predictions(predictions: List[dict]) -> str:
  return '\n'.join(f'{p["file"]}: {p["class_name"]} (class {p["class"]}, probability '
                   f'{p["probability"]:.3f})' for p in predictions)


@dataclasses.dataclass(frozen=True)
class PredictConfig:
  """The command's flags; the image files follow them."""
  model: Optional[str] = setting(None, 'The exported SavedModel folder, e.g. runs/NAME/export.')
  json: bool = setting(
      False, 'Print a JSON list of {file, class, class_name, probability, probabilities} '
      'instead of one line per file.')


cli.define_flags(PredictConfig, __name__)


def main(paths: List[str]) -> None:
  config = cli.config_from_flags(PredictConfig)
  predictions = predict_files(cli.required_flag('model'), paths)
  print(json.dumps(predictions, indent=2) if config.json else format_predictions(predictions))


def entry_point() -> None:
  """The console script (see setup.cfg); python -m trainer.predict runs it too."""
  cli.run(main, takes_arguments=True)


if __name__ == '__main__':
  entry_point()
