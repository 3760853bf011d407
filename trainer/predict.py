"""Classifies image files with an exported model.

  python -m trainer.predict --model=runs/NAME/export digit.png photo.jpg
  python -m trainer.predict --model=runs/NAME/export --json *.png

Each file (PNG, JPEG or anything else Pillow reads, at 8 or 16 bits a channel,
up to Pillow's decompression-bomb limit of about 89 megapixels) is turned into
the dataset's format before the model sees it: gray or RGB as the model takes,
scaled to fit its input (28x28 for MNIST) with the aspect kept, and padded with
the background. Transparent pixels become the background the ink is not: white
under dark ink, black under light. Float and 32-bit images are refused: their
files do not record which value is white.

Photos of handwriting: MNIST stores light strokes on a black background, the
opposite of ink on paper. --invert=auto (the default) inverts a gray image whose
border is brighter than its centre; gray images are then stretched to the full
black-to-white range. Crop a photo close to the digit: MNIST digits fill about
20 of their 28 pixels.
"""
# First: trainer.cli sets TensorFlow's environment, which TensorFlow reads as it loads.
from trainer import cli  # isort: skip

import dataclasses
import json
import os
import warnings
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps, UnidentifiedImageError

from trainer.config import setting
from trainer.errors import UserError
from trainer.export import SIGNATURE

INVERT_CHOICES = ('auto', 'yes', 'no')
BATCH_SIZE = 64
BORDER = 0.1  # the outer tenth of each side counts as the border
# Pixels whose white level the file does not record: image editors write 1.0, numpy
# arrays 255, widened 16-bit data 65535, scientific cameras physical units. Any guess
# would give a confident wrong answer, so these are refused.
WHITE_LEVEL_UNKNOWN = {'F': 'floating-point', 'I': '32-bit or signed integer'}


def load_signature(
    model_dir: str) -> Tuple[tf.types.experimental.ConcreteFunction, Tuple[int, int, int]]:
  """The export's serving signature, and the (H, W, C) uint8 images it takes."""
  if not tf.saved_model.contains_saved_model(model_dir):
    raise UserError(f'{model_dir} is not a SavedModel (no saved_model.pb); give the export '
                    'folder of a run, e.g. --model=runs/NAME/export')
  signature = tf.saved_model.load(model_dir).signatures.get(SIGNATURE)
  spec = None if signature is None else signature.structured_input_signature[1].get('images')
  if spec is None or spec.dtype != tf.uint8 or spec.shape.rank != 4:
    raise UserError(f'{model_dir} is a SavedModel but not one that trainer.export wrote (no '
                    f'{SIGNATURE} signature taking uint8 images); export the run with '
                    'python -m trainer.export --run_dir=runs/NAME')
  return signature, tuple(spec.shape[1:])


def read_image(path: str) -> Image.Image:
  """The image in `path`, upright, at 8 bits a channel."""
  if os.path.isdir(path):
    raise UserError(f'{path} is a folder, not an image; give the image files in it, e.g. '
                    f'{os.path.join(path, "*.png")}')
  if not os.path.isfile(path):
    raise UserError(f'{path} does not exist; give paths of PNG or JPEG files')
  try:
    with warnings.catch_warnings():
      # Pillow only warns between its limit and twice it, then decodes; no digit is that large.
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      image = Image.open(path)
      image.load()  # decode now, so a broken file fails here rather than later
  except (Image.DecompressionBombError, Image.DecompressionBombWarning):
    raise UserError(f'{path} is too large: over {Image.MAX_IMAGE_PIXELS:,} pixels, Pillow\'s '
                    'limit against decompression bombs; crop it close to the digit or '
                    'shrink it') from None
  except (UnidentifiedImageError, OSError) as e:
    raise UserError(f'{path} is not a readable image ({e}); give PNG or JPEG files') from None
  if image.mode in WHITE_LEVEL_UNKNOWN:
    raise UserError(f'{path} has {WHITE_LEVEL_UNKNOWN[image.mode]} pixels, whose white level '
                    'the file does not record; save it as an 8- or 16-bit PNG')
  # Phone photos are often stored sideways with an EXIF note saying how to turn them.
  return _to_8_bits(ImageOps.exif_transpose(image))


def _to_8_bits(image: Image.Image) -> Image.Image:
  """16-bit gray rescaled to 8 bits: Pillow's own conversion clips it at 255 instead.

  Pillow already reads 16-bit colour PNGs at 8 bits a channel.
  """
  if not image.mode.startswith('I;16'):
    return image
  pixels = np.asarray(image)
  eight_bits = Image.fromarray(np.round(pixels / 257).astype(np.uint8))  # 257 = 65535 / 255
  if 'transparency' in image.info:
    # The key colour becomes an alpha channel: at 8 bits, other grays would round onto it.
    key = image.info['transparency']
    eight_bits.putalpha(Image.fromarray(np.where(pixels == key, 0, 255).astype(np.uint8)))
  return eight_bits


def to_model_input(image: Image.Image,
                   image_shape: Tuple[int, int, int],
                   invert: str = 'auto') -> np.ndarray:
  """`image` as the dataset stores its images: uint8 (H, W, C), the model's input."""
  height, width, channels = image_shape
  image = _flatten_transparency(image).convert('L' if channels == 1 else 'RGB')
  if should_invert(image, invert):
    image = ImageOps.invert(image)
  if channels == 1:
    # Gray sets such as MNIST span black background to white strokes; a photo's
    # paper is seldom black once inverted, nor its ink white. (1%: ignore speckles.)
    image = ImageOps.autocontrast(image, cutoff=1)
  # Scale to fit and pad, rather than stretch: a digit keeps its proportions.
  image = ImageOps.pad(image, (width, height),
                       method=Image.Resampling.BICUBIC,
                       color=_border_color(image))
  return np.asarray(image, np.uint8).reshape(height, width, channels)


def _flatten_transparency(image: Image.Image) -> Image.Image:
  """Transparent pixels become the background: black under light ink, white under dark.

  Dropping the transparency instead shows the colour transparent pixels hide,
  often the ink's own, and the stroke vanishes.
  """
  if not image.has_transparency_data:
    return image
  image = image.convert('RGBA')
  opacity = np.asarray(image.getchannel('A'), np.float32)
  brightness = np.asarray(image.convert('L'), np.float32)
  # The ink is what is opaque (max: a fully transparent image has none, and lands on white).
  ink = (brightness * opacity).sum() / max(opacity.sum(), 1)
  background = 0 if ink >= 128 else 255
  paper = Image.new('RGBA', image.size, (background, background, background, 255))
  return Image.alpha_composite(paper, image).convert('RGB')


def should_invert(image: Image.Image, invert: str) -> bool:
  """yes, no, or auto: invert a gray image whose border is brighter than its centre."""
  if invert != 'auto':
    return invert == 'yes'
  if image.mode != 'L':
    return False  # a colour dataset's photos are not stored inverted
  pixels = np.asarray(image, np.float32)
  height, width = pixels.shape
  top, left = round(height * BORDER), round(width * BORDER)
  centre = pixels[top:height - top, left:width - left]
  border_mean = (pixels.sum() - centre.sum()) / max(pixels.size - centre.size, 1)
  return border_mean > centre.mean()


def _border_color(image: Image.Image):
  """The median colour of the outermost pixels: the background, for padding."""
  pixels = np.asarray(image)
  edges = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
  median = np.median(edges, axis=0).astype(np.uint8)
  return int(median) if median.ndim == 0 else tuple(int(v) for v in median)


def predict(signature: tf.types.experimental.ConcreteFunction,
            images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """(probabilities, classes) for a stack of model inputs, in batches."""
  outputs = [
      signature(images=tf.constant(images[start:start + BATCH_SIZE]))
      for start in range(0, len(images), BATCH_SIZE)
  ]
  return (np.concatenate([o['probabilities'].numpy() for o in outputs]),
          np.concatenate([o['classes'].numpy() for o in outputs]))


def predict_files(model_dir: str, paths: Sequence[str], invert: str = 'auto') -> List[dict]:
  """One {'file', 'class', 'probability', 'probabilities'} per path."""
  if not paths:
    raise UserError('no image files given; list them after the flags, e.g. '
                    'python -m trainer.predict --model=runs/NAME/export digit.png')
  # Every file is read before the (slower) model loads: a bad one fails the command early.
  images = [read_image(path) for path in paths]
  signature, image_shape = load_signature(model_dir)
  inputs = np.stack([to_model_input(image, image_shape, invert) for image in images])
  probabilities, classes = predict(signature, inputs)
  return [{
      'file': path,
      'class': int(c),
      'probability': float(p[c]),
      'probabilities': [float(v) for v in p]
  } for path, c, p in zip(paths, classes, probabilities)]


def format_predictions(predictions: List[dict]) -> str:
  return '\n'.join(
      f'{p["file"]}: {p["class"]} (probability {p["probability"]:.3f})' for p in predictions)


@dataclasses.dataclass(frozen=True)
class PredictConfig:
  """The command's flags; the image files follow them."""
  model: Optional[str] = setting(None, 'The exported SavedModel folder, e.g. runs/NAME/export.')
  invert: str = setting('auto', 'Invert to light-on-dark as MNIST stores digits: auto does so '
                        'for a gray model when the border is brighter than the centre (dark ink '
                        'on paper).',
                        choices=INVERT_CHOICES)
  json: bool = setting(
      False, 'Print a JSON list of {file, class, probability, probabilities} '
      'instead of one line per file.')


cli.define_flags(PredictConfig, __name__)


def main(paths: List[str]) -> None:
  config = cli.config_from_flags(PredictConfig)
  predictions = predict_files(cli.required_flag('model'), paths, config.invert)
  print(json.dumps(predictions, indent=2) if config.json else format_predictions(predictions))


def entry_point() -> None:
  """The console script (see setup.cfg); python -m trainer.predict runs it too."""
  cli.run(main, takes_arguments=True)


if __name__ == '__main__':
  entry_point()
