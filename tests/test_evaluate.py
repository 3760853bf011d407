"""python -m trainer.evaluate, and what a run tells TensorBoard (HParams, throughput, profile)."""
import collections
import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import plugin_data_pb2

from helpers import MOCK_EXAMPLES
from trainer import callbacks, data, distribution, evaluate, runs
from trainer.config import DatasetInfo, TrainConfig
from trainer.errors import UserError
from trainer.keras_lib import keras


def summaries(log_dir):
  """{tag: [(step, Summary.Value)]} from the event files directly in `log_dir`."""
  found = collections.defaultdict(list)
  for path in tf.io.gfile.glob(os.path.join(log_dir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        found[value.tag].append((event.step, value))
  return found


def scalar(value):
  return float(tf.make_ndarray(value.tensor))


def image(value):
  """A tf.summary.image value holds [width, height, PNG...] strings."""
  return tf.io.decode_png(value.tensor.string_val[2]).numpy()


# ---- python -m trainer.evaluate


def test_evaluate_prints_and_logs_the_best_checkpoint_on_the_test_split(
    tiny_run, mock_mnist, capsys):
  evaluation = evaluate.evaluate_run(tiny_run)

  assert evaluation.num_examples == MOCK_EXAMPLES  # the whole test split, not --eval_steps
  assert evaluation.confusion.shape == (10, 10)
  assert len(evaluation.mistakes) == min(evaluate.MAX_MISCLASSIFIED,
                                         MOCK_EXAMPLES - evaluation.num_correct)
  printed = capsys.readouterr().out
  assert f'Test accuracy: {evaluation.accuracy:.4f}' in printed
  assert 'Confusion matrix (rows: true class, columns: predicted class)' in printed

  logged = summaries(os.path.join(tiny_run, runs.EVALUATE_LOG_DIR))
  assert scalar(logged['test_accuracy'][-1][1]) == pytest.approx(evaluation.accuracy)
  assert image(logged['confusion_matrix'][-1][1]).shape == (11 * evaluate.CELL, 11 * evaluate.CELL,
                                                            3)
  assert image(logged['misclassified'][-1][1]).shape[2] == 3
  assert 'report' in logged


class LookupModel:
  """Stands in for a Keras model: an image's probabilities are the table row its first pixel names."""

  def __init__(self, table):
    self.table = np.asarray(table, np.float32)

  def predict_on_batch(self, images):
    return self.table[images.numpy()[:, 0, 0, 0]]


def test_evaluate_counts_loss_confusion_and_mistakes():
  model = LookupModel([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])
  images = np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1)
  labels = np.array([0, 1, 2, 1])  # the second image is a 1 taken for a 2
  batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(3)

  evaluation = evaluate.evaluate(model, batches, num_classes=3)

  np.testing.assert_array_equal(evaluation.confusion, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
  assert evaluation.accuracy == 0.75
  np.testing.assert_allclose(evaluation.per_class_accuracy, [1.0, 0.5, 1.0])
  assert evaluation.loss == pytest.approx(-np.mean(np.log([0.8, 0.1, 0.8, 0.8])), rel=1e-5)
  [mistake] = evaluation.mistakes
  assert (mistake.true_class, mistake.predicted_class) == (1, 2)
  assert mistake.probability == pytest.approx(0.8)
  assert mistake.image.tolist() == [[[1]]]


def test_report_tables():
  evaluation = evaluate.Evaluation(0.5, np.array([[2, 0, 0], [1, 1, 0], [0, 0, 0]]), [])
  report = evaluate.format_report(evaluation, ('cat', 'dog', 'bird'))
  assert report.splitlines()[:2] == ['Test loss    : 0.50000', 'Test accuracy: 0.7500 (3 of 4)']
  assert ('class   examples  correct  accuracy\n'
          '0 cat          2        2    1.0000\n'
          '1 dog          2        1    0.5000\n'
          '2 bird         0        0         -') in report
  assert ('true \\ predicted  0  1  2\n'
          '0 cat             2  0  0\n'
          '1 dog             1  1  0\n'
          '2 bird            0  0  0') in report


def test_images_for_tensorboard():
  confusion = evaluate.confusion_matrix_image(np.array([[3, 1], [0, 0]]))
  assert confusion.shape == (3 * evaluate.CELL, 3 * evaluate.CELL, 3)
  assert confusion.dtype == np.uint8
  digit = np.full((28, 28, 1), 255, np.uint8)
  grid = evaluate.misclassified_grid([evaluate.Mistake(digit, 1, 7, 0.9)] * 7)
  step_y = 28 * evaluate.TILE_SCALE + evaluate.CAPTION_HEIGHT + evaluate.GAP
  step_x = 28 * evaluate.TILE_SCALE + evaluate.GAP
  assert grid.shape == (2 * step_y, evaluate.GRID_COLUMNS * step_x, 3)


# ---- What training tells TensorBoard


def test_hparams_dashboard_gets_the_run_settings_and_test_metrics(tiny_run):
  logged = summaries(os.path.join(tiny_run, 'logs'))
  [(_, start)] = logged[hparams_metadata.SESSION_START_INFO_TAG]
  hparams = plugin_data_pb2.HParamsPluginData.FromString(
      start.metadata.plugin_data.content).session_start_info.hparams
  assert hparams['adapter'].string_value == 'rgb'
  assert hparams['image_size'].number_value == 32
  assert hparams['train_mode'].string_value == 'finetune'
  # The policy the run resolved, not 'auto'.
  assert hparams['precision'].string_value == distribution.resolve_precision('auto', num_gpus=0)
  assert 'run_dir' not in hparams
  with open(os.path.join(tiny_run, runs.METRICS_FILE)) as f:
    metrics = json.load(f)
  for name in ('test_loss', 'test_accuracy'):
    assert scalar(logged[name][-1][1]) == pytest.approx(metrics[name])


def test_throughput_is_logged_every_epoch(tiny_run):
  logged = summaries(os.path.join(tiny_run, 'logs', 'train'))
  throughput = [scalar(value) for _, value in logged['epoch_examples_per_second']]
  assert len(throughput) == 2  # TINY_FLAGS' two epochs
  assert all(examples_per_second > 0 for examples_per_second in throughput)


def test_profile_steps_write_a_profile_for_the_profile_tab(tmp_path):
  # A small model through the run's callbacks: what is under test is the wiring, not DenseNet
  # (which has BatchNorm layers to recalibrate; this model has none).
  config = TrainConfig(run_dir=str(tmp_path), profile_steps='2,3', recalibrate_batchnorm=0)
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation='softmax')])
  model.compile('adam',
                'sparse_categorical_crossentropy',
                metrics=[keras.metrics.SparseCategoricalAccuracy(name='accuracy')])
  features, labels = np.zeros((16, 4)), np.zeros(16)
  split = tf.data.Dataset.from_tensor_slices((features, labels))
  splits = data.Splits(split, split, split, DatasetInfo((1, 1, 4), 2, ("a", "b")))
  log_dir = str(tmp_path / 'logs')
  model.fit(features,
            labels,
            batch_size=4,
            validation_data=(features, labels),
            verbose=0,
            callbacks=callbacks.training_callbacks(config,
                                                   str(tmp_path),
                                                   'finetune',
                                                   True,
                                                   keras.optimizers.schedules.CosineDecay(1e-3, 4),
                                                   steps_per_epoch=4,
                                                   splits=splits,
                                                   settings_text=''))
  profiles = [
      name for _, _, names in os.walk(log_dir) for name in names if name.endswith('.xplane.pb')
  ]
  assert profiles


def test_profile_steps_flag_is_checked_and_may_change_on_resume(tmp_path):
  from trainer import main  # pylint: disable=import-outside-toplevel
  flags.FLAGS(['trainer.main', '--profile_steps=10,12', f'--run_dir={tmp_path}'])
  config = main.config_from_flags()
  assert config.profile_steps == '10,12'
  runs.record_config(config.run_dir, config, flags_text='')
  runs.check_resumable(dataclasses.replace(config, profile_steps=''))  # no error
  flags.FLAGS.unparse_flags()
  with pytest.raises(flags.IllegalFlagValueError):
    flags.FLAGS(['trainer.main', '--profile_steps=12,10'])


def test_a_dataset_json_that_no_longer_matches_the_data_is_refused_in_one_line():
  trained_on = DatasetInfo((28, 28, 1), 10, tuple('0123456789'))
  evaluate.check_same_data('runs/x', trained_on, trained_on)  # the same: no error
  with pytest.raises(UserError,
                     match=r'trained on 10 classes of 32x32x3 images .*gives 10 '
                     r'classes of 28x28x1; restore dataset.json'):
    evaluate.check_same_data('runs/x', DatasetInfo((32, 32, 3), 10, tuple('0123456789')),
                             trained_on)
