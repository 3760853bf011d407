"""Evaluates a run's best checkpoint on the test split.

  python -m trainer.evaluate --run_dir=runs/NAME

Prints the test loss and accuracy, the accuracy of each class and the confusion
matrix, and writes them to TensorBoard under runs/NAME/logs/evaluate: the
confusion matrix as an image, and a grid of misclassified test images captioned
with their true and predicted classes.

The whole test split is evaluated (the run's --eval_steps, a training shortcut,
does not apply), so the numbers can differ from those in the run's metrics.json.
"""
# First: trainer.cli sets TensorFlow's environment, which TensorFlow reads as it loads.
from trainer import cli  # isort: skip

import dataclasses
from typing import List, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from trainer import data, runs
from trainer.config import DatasetInfo, TrainConfig
from trainer.errors import UserError
from trainer.keras_lib import keras

cli.define_flags(TrainConfig, __name__, names=['run_dir'])
MAX_MISCLASSIFIED = 24  # images in the TensorBoard grid
GRID_COLUMNS = 6
TILE_SCALE = 3  # a 28x28 digit shows as 84x84
CAPTION_HEIGHT = 26  # two lines of Pillow's default font
GAP = 4  # white space between grid tiles, so dark images stay apart
CELL = 32  # pixels per confusion-matrix cell


@dataclasses.dataclass(frozen=True)
class Mistake:
  image: np.ndarray  # uint8 HxWxC, as stored
  true_class: int
  predicted_class: int
  probability: float  # of the predicted class


@dataclasses.dataclass(frozen=True)
class Evaluation:
  loss: float  # mean cross-entropy, like training's test_loss
  confusion: np.ndarray  # counts, [true class, predicted class]
  mistakes: List[Mistake]  # the first MAX_MISCLASSIFIED, in test-split order

  @property
  def num_examples(self) -> int:
    return int(self.confusion.sum())

  @property
  def num_correct(self) -> int:
    return int(np.trace(self.confusion))

  @property
  def accuracy(self) -> float:
    return self.num_correct / self.num_examples

  @property
  def per_class_accuracy(self) -> np.ndarray:
    """Correct over examples of each true class; NaN for a class with no test examples."""
    with np.errstate(invalid='ignore', divide='ignore'):
      return np.diag(self.confusion) / self.confusion.sum(axis=1)


def evaluate_run(run_dir: str) -> Evaluation:
  """Evaluates, prints the report and writes it to TensorBoard."""
  config = runs.load_config(run_dir)
  model = runs.load_best_model(
      run_dir)  # first: a run without a checkpoint fails before loading data
  splits = data.splits_for(config)
  check_same_data(run_dir, runs.read_dataset_info(run_dir), splits.info)
  test_batches = splits.evaluation_batches('test', config.batch_size)
  evaluation = evaluate(model, test_batches, splits.info.num_classes)
  report = format_report(evaluation, splits.info.class_names)
  print(report)
  log_dir = runs.path(run_dir, runs.EVALUATE_LOG_DIR)
  with runs.resources_as_user_errors(run_dir, 'the report above is written to TensorBoard too'):
    write_to_tensorboard(evaluation, report, log_dir)
  print(f'TensorBoard: tensorboard --logdir {log_dir}')
  return evaluation


def check_same_data(run_dir: str, trained_on: DatasetInfo, now: DatasetInfo) -> None:
  """The test split must be of the images and classes the model was trained on."""
  if (trained_on.image_shape, trained_on.num_classes) != (now.image_shape, now.num_classes):
    raise UserError(
        f'{run_dir} was trained on {trained_on.num_classes} classes of '
        f'{"x".join(map(str, trained_on.image_shape))} images ({runs.DATASET_FILE}), but its '
        f'--dataset now gives {now.num_classes} classes of '
        f'{"x".join(map(str, now.image_shape))}; restore {runs.DATASET_FILE} from a copy, or '
        'check --data_dir')


def evaluate(model: keras.Model, test_batches: tf.data.Dataset, num_classes: int) -> Evaluation:
  """One pass over `test_batches` of (uint8 images, labels)."""
  confusion = np.zeros((num_classes, num_classes), np.int64)
  total_loss = 0.0
  mistakes: List[Mistake] = []
  for images, labels in test_batches:
    probabilities = model.predict_on_batch(images)
    labels = labels.numpy()
    predicted = probabilities.argmax(axis=-1)
    total_loss += float(np.sum(keras.losses.sparse_categorical_crossentropy(labels, probabilities)))
    np.add.at(confusion, (labels, predicted), 1)
    for i in np.flatnonzero(predicted != labels)[:MAX_MISCLASSIFIED - len(mistakes)]:
      mistakes.append(
          Mistake(images[i].numpy(), int(labels[i]), int(predicted[i]),
                  float(probabilities[i, predicted[i]])))
  if not confusion.sum():
    raise UserError('the test split is empty; check the run\'s --dataset')
  return Evaluation(total_loss / confusion.sum(), confusion, mistakes)


# ---- The printed report


def format_report(evaluation: Evaluation, class_names: Sequence[str]) -> str:
  labels = [_class_label(i, name) for i, name in enumerate(class_names)]
  per_class = [[label, count, correct, '-' if np.isnan(accuracy) else f'{accuracy:.4f}']
               for label, count, correct, accuracy in zip(labels, evaluation.confusion.sum(
                   axis=1), np.diag(evaluation.confusion), evaluation.per_class_accuracy)]
  confusion = [[label, *row] for label, row in zip(labels, evaluation.confusion)]
  return '\n'.join([
      f'Test loss    : {evaluation.loss:.5f}',
      f'Test accuracy: {evaluation.accuracy:.4f} '
      f'({evaluation.num_correct} of {evaluation.num_examples})',
      '',
      'Per class',
      _table(['class', 'examples', 'correct', 'accuracy'], per_class),
      '',
      'Confusion matrix (rows: true class, columns: predicted class)',
      _table(['true \\ predicted', *range(len(labels))], confusion),
  ])


def _class_label(index, name):
  return name if name == str(index) else f'{index} {name}'


def _table(header, rows) -> str:
  """Left-aligned first column, right-aligned numbers, columns two spaces apart."""
  cells = [[str(cell) for cell in row] for row in [header, *rows]]
  widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
  return '\n'.join('  '.join([row[0].ljust(widths[0])] +
                             [cell.rjust(w)
                              for cell, w in zip(row[1:], widths[1:])])
                   for row in cells)


# ---- TensorBoard


def write_to_tensorboard(evaluation: Evaluation, report: str, log_dir: str) -> None:
  with tf.summary.create_file_writer(log_dir).as_default():
    tf.summary.scalar('test_loss', evaluation.loss, step=0)
    tf.summary.scalar('test_accuracy', evaluation.accuracy, step=0)
    # Indented, the report shows as preformatted text in the Text tab.
    tf.summary.text('report', '\n'.join('    ' + line for line in report.splitlines()), step=0)
    tf.summary.image('confusion_matrix', confusion_matrix_image(evaluation.confusion)[None], step=0)
    if evaluation.mistakes:
      tf.summary.image('misclassified', misclassified_grid(evaluation.mistakes)[None], step=0)


def confusion_matrix_image(confusion: np.ndarray) -> np.ndarray:
  """RGB uint8: one cell per (true row, predicted column), darker for a larger share of the row."""
  num_classes = len(confusion)
  with np.errstate(invalid='ignore', divide='ignore'):
    shares = np.nan_to_num(confusion / confusion.sum(axis=1, keepdims=True))
  side = (num_classes + 1) * CELL  # one extra row and column for the class numbers
  image = Image.new('RGB', (side, side), 'white')
  draw = ImageDraw.Draw(image)
  font = ImageFont.load_default()
  _centred_text(draw, (0, 0), 't\\p', font, 'black')
  for i in range(num_classes):
    _centred_text(draw, (0, (i + 1) * CELL), str(i), font, 'black')
    _centred_text(draw, ((i + 1) * CELL, 0), str(i), font, 'black')
  for (true, predicted), count in np.ndenumerate(confusion):
    corner = ((predicted + 1) * CELL, (true + 1) * CELL)
    share = shares[true, predicted]
    blue = (int(255 - 225 * share), int(255 - 160 * share), 255)
    draw.rectangle([corner, (corner[0] + CELL - 1, corner[1] + CELL - 1)], fill=blue)
    if count:
      _centred_text(draw, corner, str(count), font, 'white' if share > 0.5 else 'black')
  return np.asarray(image)


def _centred_text(draw, corner, text, font, color):
  left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
  draw.text((corner[0] + (CELL - right - left) / 2, corner[1] + (CELL - bottom - top) / 2),
            text,
            font=font,
            fill=color)


def misclassified_grid(mistakes: List[Mistake]) -> np.ndarray:
  """RGB uint8: each image enlarged, captioned with its true and predicted (probability) class."""
  height, width = mistakes[0].image.shape[:2]
  step_x, step_y = width * TILE_SCALE + GAP, height * TILE_SCALE + CAPTION_HEIGHT + GAP
  rows = -(-len(mistakes) // GRID_COLUMNS)
  grid = Image.new('RGB', (GRID_COLUMNS * step_x, rows * step_y), 'white')
  draw = ImageDraw.Draw(grid)
  font = ImageFont.load_default()
  for n, mistake in enumerate(mistakes):
    left, top = (n % GRID_COLUMNS) * step_x, (n // GRID_COLUMNS) * step_y
    pixels = mistake.image[..., 0] if mistake.image.shape[-1] == 1 else mistake.image
    tile = Image.fromarray(pixels).convert('RGB').resize((width * TILE_SCALE, height * TILE_SCALE),
                                                         Image.Resampling.NEAREST)
    grid.paste(tile, (left, top))
    caption = (f'true {mistake.true_class}\n'
               f'pred {mistake.predicted_class} ({mistake.probability:.2f})')
    draw.multiline_text((left + 2, top + height * TILE_SCALE + 1),
                        caption,
                        font=font,
                        fill='black',
                        spacing=2)
  return np.asarray(grid)


def main(_: List[str]) -> None:
  evaluate_run(cli.required_flag('run_dir'))


def entry_point() -> None:
  """The console script (see setup.cfg); python -m trainer.evaluate runs it too."""
  cli.run(main)


if __name__ == '__main__':
  entry_point()
