"""An exported MNIST model served as clients call it: real test digits as files, as they are
and turned into dark ink on light paper, drawn or photographed; the exported model against
its TFLite and ONNX conversions; and the size of a REST request.

  python -m benchmarks.serving --mnist_idx=DIR --count=1000 runs/NAME/export

The first table runs the SavedModel's images_uint8 on inputs made by trainer/images.py with
each choice of the gray adjustments (none, inversion, autocontrast, both: what
serving_default does), and calls serving_default itself. The second converts images_uint8
with tf.lite (float32 and Optimize.DEFAULT) and, where tf2onnx and onnxruntime are
installed, to ONNX, and compares them with the SavedModel on the test digits as stored. The
third sizes a TF Serving REST request for 32 digits either way.
"""
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf
from absl import flags
from PIL import Image, ImageFilter

from trainer import cli, export, idx, images
from trainer.errors import UserError

flags.DEFINE_string('mnist_idx', None, 'Folder of the MNIST IDX files (t10k-* are read).')
flags.DEFINE_integer('count', 1000, 'Test digits to use (the first COUNT).', lower_bound=1)
flags.DEFINE_integer('seed', 0, 'Seed of the drawings and photos.')
FLAGS = flags.FLAGS

ADJUSTMENTS: Dict[str, Optional[Callable[[tf.Tensor], tf.Tensor]]] = {
    'none':
        None,
    'inversion':
        images.invert_if_light_background,
    'autocontrast':
        images.autocontrast,
    'both (serving_default)':
        lambda image: images.autocontrast(images.invert_if_light_background(image)),
}
BATCH = 100

# ---- Digit files


def as_stored(digit: np.ndarray, rng: np.random.Generator) -> bytes:
  """The digit as MNIST stores it, a 28x28 PNG."""
  del rng
  return _encode(Image.fromarray(digit), 'PNG')


def drawn(digit: np.ndarray, rng: np.random.Generator) -> bytes:
  """Black ink on white, 4x to 8x larger, somewhere near the middle of a page: a PNG from a
  drawing app."""
  strokes = _on_canvas(digit, rng, scale=int(rng.integers(4, 9)))
  return _encode(Image.fromarray(255 - strokes), 'PNG')


def photographed(digit: np.ndarray, rng: np.random.Generator) -> bytes:
  """Dark ink on tinted off-white paper, 6x to 12x larger, under uneven light, out of focus,
  with sensor noise, as a JPEG at quality 60 to 90."""
  strokes = _on_canvas(digit, rng, scale=int(rng.integers(6, 13))).astype(np.float32) / 255
  paper = rng.uniform(185, 235) + rng.uniform(-12, 12, 3)
  ink = rng.uniform(15, 80) + rng.uniform(-15, 15, 3)
  height, width = strokes.shape
  y, x = np.mgrid[0:height, 0:width]
  angle = rng.uniform(0, 2 * np.pi)
  slope = (np.cos(angle) * x / width + np.sin(angle) * y / height)
  light = 1 - rng.uniform(0.05, 0.25) * (slope - slope.min()) / max(np.ptp(slope), 1e-6)
  pixels = (paper * (1 - strokes[..., None]) + ink * strokes[..., None]) * light[..., None]
  image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
  image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
  noisy = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(3, 8), (height, width, 3))
  return _encode(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)),
                 'JPEG',
                 quality=int(rng.integers(60, 91)))


def _on_canvas(digit, rng, scale):
  """The digit (light on black) enlarged `scale` times on a black canvas cropped close to it,
  as trainer.predict asks: its 28x28 frame (the digit and MNIST's margins) fills 80-100% of
  the canvas's height, the width 90-110% of the height, off centre by up to a tenth of the
  room left."""
  side = 28 * scale
  large = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC))
  height = int(side / rng.uniform(0.8, 1.0))
  width = max(int(height * rng.uniform(0.9, 1.1)), side)
  canvas = np.zeros((height, width), np.uint8)
  top = int((height - side) / 2 + rng.uniform(-0.1, 0.1) * (height - side))
  left = int((width - side) / 2 + rng.uniform(-0.1, 0.1) * (width - side))
  canvas[top:top + side, left:left + side] = large
  return canvas


def _encode(image: Image.Image, file_format: str, **options) -> bytes:
  out = io.BytesIO()
  image.save(out, file_format, **options)
  return out.getvalue()


# ---- Measurements


def model_inputs(files: List[bytes], adjust) -> np.ndarray:
  """uint8 28x28x1 inputs made from the files by trainer/images.py with `adjust`."""
  convert = tf.function(
      lambda encoded: tf.map_fn(lambda one: images.decode_image(one, 28, 28, 1, adjust),
                                encoded,
                                fn_output_signature=tf.TensorSpec((28, 28, 1), tf.uint8)))
  return np.concatenate(
      [convert(tf.constant(files[i:i + BATCH])).numpy() for i in range(0, len(files), BATCH)])


def run_uint8(signature, inputs: np.ndarray) -> np.ndarray:
  return np.concatenate([
      signature(**{export.IMAGES: tf.constant(inputs[i:i + BATCH])})[export.PROBABILITIES].numpy()
      for i in range(0, len(inputs), BATCH)
  ])


def accuracy_table(export_dir: str, digits: np.ndarray, labels: np.ndarray, seed: int) -> str:
  loaded = tf.saved_model.load(export_dir)
  uint8, served = loaded.signatures[export.UINT8_SIGNATURE], loaded.signatures[
      export.SERVING_SIGNATURE]
  rows = [
      '| Digits as files | ' + ' | '.join(ADJUSTMENTS) + ' | serving_default, called |',
      '| --- |' + ' ---: |' * (len(ADJUSTMENTS) + 1)
  ]
  for name, make in [('as stored (28x28 PNG)', as_stored), ('drawn (PNG)', drawn),
                     ('photographed (JPEG)', photographed)]:
    rng = np.random.default_rng(seed)
    files = [make(digit, rng) for digit in digits]
    cells = []
    for adjust in ADJUSTMENTS.values():
      predicted = run_uint8(uint8, model_inputs(files, adjust)).argmax(axis=-1)
      cells.append(f'{np.mean(predicted == labels):.4f}')
    called = np.concatenate([
        served(**{export.IMAGE_BYTES: tf.constant(files[i:i + BATCH])})[export.CLASSES].numpy()
        for i in range(0, len(files), BATCH)
    ])
    cells.append(f'{np.mean(called == labels):.4f}')
    rows.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    print(rows[-1], file=sys.stderr, flush=True)
  return '\n'.join(rows)


def conversion_table(export_dir: str, digits: np.ndarray) -> str:
  inputs = digits[..., np.newaxis]
  reference = run_uint8(tf.saved_model.load(export_dir).signatures[export.UINT8_SIGNATURE], inputs)
  rows = [
      '| Conversion of images_uint8 | File size (MB) | Max probability difference | '
      'Same class |', '| --- | ---: | ---: | ---: |'
  ]
  for optimization, optimizations in [('float32', []),
                                      ('dynamic_range', [tf.lite.Optimize.DEFAULT])]:
    converter = tf.lite.TFLiteConverter.from_saved_model(export_dir,
                                                         signature_keys=[export.UINT8_SIGNATURE])
    converter.optimizations = optimizations
    model = converter.convert()
    runner = tf.lite.Interpreter(model_content=model).get_signature_runner(export.UINT8_SIGNATURE)
    probabilities = np.concatenate([
        runner(**{export.IMAGES: inputs[i:i + BATCH]})[export.PROBABILITIES]
        for i in range(0, len(inputs), BATCH)
    ])
    rows.append(_comparison_row(f'TFLite {optimization}', len(model), probabilities, reference))
  onnx_file = _to_onnx(export_dir)
  if onnx_file:
    import onnxruntime  # pylint: disable=import-outside-toplevel
    session = onnxruntime.InferenceSession(onnx_file)
    name = session.get_inputs()[0].name
    output = [o.name for o in session.get_outputs()].index(export.PROBABILITIES)
    probabilities = np.concatenate([
        session.run(None, {name: inputs[i:i + BATCH]})[output]
        for i in range(0, len(inputs), BATCH)
    ])
    rows.append(
        _comparison_row('ONNX (tf2onnx, opset 15)', os.path.getsize(onnx_file), probabilities,
                        reference))
  return '\n'.join(rows)


def _comparison_row(name, size, probabilities, reference):
  difference = np.abs(probabilities - reference).max()
  same = np.mean(probabilities.argmax(axis=-1) == reference.argmax(axis=-1))
  return f'| {name} | {size / 1e6:.1f} | {difference:.2g} | {same:.4f} |'


def _to_onnx(export_dir: str) -> Optional[str]:
  """The ONNX file tf2onnx makes of images_uint8, or None without tf2onnx and onnxruntime."""
  try:
    import onnxruntime  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import tf2onnx  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return None
  path = os.path.join(tempfile.mkdtemp(), 'model.onnx')
  subprocess.run([
      sys.executable, '-m', 'tf2onnx.convert', '--saved-model', export_dir, '--signature_def',
      export.UINT8_SIGNATURE, '--opset', '15', '--output', path
  ],
                 check=True,
                 capture_output=True)
  return path


def payload_table(digits: np.ndarray) -> str:
  """A REST request for 32 digits, as nested integers and as base64 PNGs."""
  batch = digits[:32]
  as_numbers = json.dumps({'instances': batch[..., np.newaxis].tolist()})
  as_png = json.dumps({
      'instances': [{
          'b64': base64.b64encode(as_stored(digit, np.random.default_rng())).decode()
      } for digit in batch]
  })
  return '\n'.join([
      '| Request body for 32 digits | Bytes |', '| --- | ---: |',
      f'| images_uint8: {{"instances": [[[[0], ...]]]}} | {len(as_numbers):,} |',
      f'| serving_default: {{"instances": [{{"b64": PNG}}, ...]}} | {len(as_png):,} |'
  ])


def main(argv: List[str]) -> None:
  if len(argv) != 1 or not FLAGS.mnist_idx:
    raise UserError('give --mnist_idx=DIR and one export folder, e.g. runs/NAME/export')
  test = idx.load_idx_split(FLAGS.mnist_idx, idx.SPLIT_PREFIXES['test']).take(FLAGS.count)
  digits, labels = next(test.batch(FLAGS.count).as_numpy_iterator())
  digits = digits[..., 0]
  print(f'{len(digits)} MNIST test digits\n')
  print(accuracy_table(argv[0], digits, labels, FLAGS.seed) + '\n', flush=True)
  print(conversion_table(argv[0], digits) + '\n', flush=True)
  print(payload_table(digits))


if __name__ == '__main__':
  cli.run(main, takes_arguments=True)
