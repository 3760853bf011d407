"""The run folder: its lock, what a resume trusts, what a finished run may record."""
import csv
import errno
import json
import math
import os
import shutil
import socket

import numpy as np
import pytest
import tensorflow as tf

import helpers
from trainer import callbacks, runs, weights
from trainer.config import ModelConfig, TrainConfig
from trainer.errors import UserError
from trainer.keras_lib import keras
from trainer.model import backbone_of, build_model

# ---- The lock


def test_a_second_process_on_a_folder_is_refused_naming_the_holder(tmp_path):
  with runs.locked(str(tmp_path)):
    with pytest.raises(UserError, match=f'in use by process {socket.gethostname()} {os.getpid()}'):
      with runs.locked(str(tmp_path)):
        pass
  assert not (tmp_path / runs.LOCK_FILE).exists()  # released when the run ends


def test_the_lock_of_a_dead_local_process_is_taken_over(tmp_path):
  dead_pid = 2**22 + 1  # above Linux's largest pid
  (tmp_path / runs.LOCK_FILE).write_text(f'{socket.gethostname()} {dead_pid}')
  with runs.locked(str(tmp_path)):
    assert (tmp_path / runs.LOCK_FILE).read_text() == f'{socket.gethostname()} {os.getpid()}'


def test_the_lock_of_another_host_is_respected(tmp_path):
  (tmp_path / runs.LOCK_FILE).write_text('another-host 12')
  with pytest.raises(UserError, match='another-host 12'):
    with runs.locked(str(tmp_path)):
      pass


def test_a_run_dir_that_is_a_file_is_refused(tmp_path):
  (tmp_path / 'file').write_text('')
  with pytest.raises(UserError, match='is a file, not a folder'):
    with runs.locked(str(tmp_path / 'file')):
      pass


# ---- Resuming


def tiny_model():
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation='softmax')])
  model.compile('adam',
                'sparse_categorical_crossentropy',
                metrics=[keras.metrics.SparseCategoricalAccuracy(name='accuracy')])
  return model


class KillAtEpoch(keras.callbacks.Callback):

  def __init__(self, epoch):
    super().__init__()
    self.kill_epoch = epoch

  def on_epoch_begin(self, epoch, logs=None):
    if epoch == self.kill_epoch:
      raise KeyboardInterrupt


def test_the_backed_up_epoch_is_what_backup_and_restore_resumes_after(tmp_path):
  run_dir = str(tmp_path)
  assert runs.backed_up_epoch(run_dir, 'finetune') is None
  features, labels = np.zeros((8, 2)), np.zeros(8)
  with pytest.raises(KeyboardInterrupt):
    tiny_model().fit(features,
                     labels,
                     epochs=5,
                     verbose=0,
                     callbacks=[
                         keras.callbacks.BackupAndRestore(runs.backup_dir(run_dir, 'finetune')),
                         KillAtEpoch(2)
                     ])
  assert runs.backed_up_epoch(run_dir, 'finetune') == 1  # epochs 0 and 1 finished


def test_history_rows_of_epochs_the_backup_did_not_record_are_dropped(tmp_path):
  history = tmp_path / runs.HISTORY_FILE
  history.write_text('epoch,loss,val_accuracy\n0,2.0,0.5\n1,1.0,0.6\n2,0.5,0.7\n')
  runs.trim_history(str(tmp_path), 2)
  with open(history) as f:
    assert [row['epoch'] for row in csv.DictReader(f)] == ['0', '1']
  assert runs.best_validation_accuracy(str(tmp_path)) == 0.6
  runs.trim_history(str(tmp_path), 5)  # fewer rows than that: nothing to drop
  assert len(history.read_text().splitlines()) == 3


# ---- What a run records


def test_metrics_json_holds_only_finite_numbers(tmp_path):
  with pytest.raises(UserError, match='not finite.*lower --learning_rate'):
    runs.write_metrics(str(tmp_path), {'test_loss': math.nan, 'test_accuracy': 0.1})
  assert not (tmp_path / runs.METRICS_FILE).exists()  # the run does not count as finished
  runs.write_metrics(str(tmp_path), {'test_loss': 0.1, 'test_accuracy': 0.9})
  assert json.loads((tmp_path / runs.METRICS_FILE).read_text())['test_accuracy'] == 0.9


def test_a_non_finite_loss_stops_training_naming_the_epoch_and_step(tmp_path):
  features, labels = np.zeros((8, 2)), np.zeros(8)
  features[5] = np.nan  # the third batch of two
  with pytest.raises(UserError, match='became nan at epoch 1, step 3.*lower --learning_rate'):
    tiny_model().fit(features,
                     labels,
                     batch_size=2,
                     epochs=2,
                     verbose=0,
                     shuffle=False,
                     callbacks=[callbacks.StopOnBadEpoch()])


def test_an_epoch_without_validation_ends_the_run(tmp_path):
  with pytest.raises(UserError, match='epoch 1 ended without validation metrics'):
    tiny_model().fit(np.zeros((4, 2)),
                     np.zeros(4),
                     verbose=0,
                     callbacks=[callbacks.StopOnBadEpoch()])


@pytest.mark.parametrize('damage, expected', [
    (lambda run: run.joinpath(runs.CONFIG_FILE).write_text('{not json'), 'is not a config'),
    (lambda run: _edit_config(run, lambda c: c.update(colour='red')), 'is not a config'),
    (lambda run: _edit_config(run, lambda c: c.pop('model')), 'is not a config'),
    (lambda run: _edit_config(run, lambda c: c['model'].update(adapter='conv')),
     'no longer match them'),
    (lambda run: _edit_dataset(run, num_classes=3, class_names=['a', 'b', 'c']),
     'no longer match them'),
    (lambda run: _truncate(run, 'best.data-00000-of-00001'), 'does not load'),
    (lambda run: _truncate(run, 'best.index'), 'does not load'),
])
def test_a_damaged_run_folder_is_refused_in_one_line(tiny_run, tmp_path, damage, expected):
  run = tmp_path / 'run'
  shutil.copytree(tiny_run, run)
  damage(run)
  with pytest.raises(UserError, match=expected):
    runs.load_best_model(str(run))


def _edit_config(run, change):
  config = json.loads((run / runs.CONFIG_FILE).read_text())
  change(config)
  (run / runs.CONFIG_FILE).write_text(json.dumps(config))


def _edit_dataset(run, **fields):
  info = json.loads((run / runs.DATASET_FILE).read_text())
  (run / runs.DATASET_FILE).write_text(json.dumps({**info, **fields}))


def _truncate(run, name):
  path = run / runs.CHECKPOINT_DIR / name
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def test_a_vertex_ai_job_writes_where_vertex_says(monkeypatch):
  monkeypatch.setenv(runs.VERTEX_MODEL_DIR, 'gs://bucket/job/model/')
  monkeypatch.setenv(runs.VERTEX_TENSORBOARD_DIR, 'gs://bucket/job/logs/')
  # The model alone at AIP_MODEL_DIR, where a model import reads it; the run beside it.
  assert runs.default_run_dir() == 'gs://bucket/job/run'
  assert runs.export_dir('gs://bucket/job/run') == 'gs://bucket/job/model/'
  assert runs.log_dir('gs://bucket/job/run') == 'gs://bucket/job/logs/'
  assert runs.log_dir('runs/other') == os.path.join('runs/other', runs.LOG_DIR)
  assert runs.default_run_dir('named') == os.path.join('runs', 'named')  # a name still wins
  monkeypatch.delenv(runs.VERTEX_MODEL_DIR)
  assert runs.default_run_dir('').startswith('runs' + os.sep)
  assert runs.export_dir('runs/other') == os.path.join('runs/other', runs.EXPORT_DIR)


def test_a_vertex_ai_job_restarted_resumes_its_run_and_exports_to_aip_model_dir(
    tiny_run, tmp_path, monkeypatch, mock_mnist, notop_weights_file):
  """A Vertex AI job started again (a restart, or a new job given the same output folder)
  finds its run folder from the job's variables alone; its SavedModel lands at the root of
  AIP_MODEL_DIR, where a model import and a prebuilt serving container read it."""
  base = tmp_path / 'job'
  monkeypatch.setenv(runs.VERTEX_MODEL_DIR, f'{base}/model/')
  monkeypatch.setenv(runs.VERTEX_TENSORBOARD_DIR, f'{base}/logs/')
  # The first job's run folder as a job stopped during its test evaluation leaves it.
  run_dir = base / runs.VERTEX_RUN_DIR
  shutil.copytree(tiny_run,
                  run_dir,
                  ignore=shutil.ignore_patterns(runs.METRICS_FILE, runs.EXPORT_DIR,
                                                runs.KERAS_MODEL_FILE))
  history = (run_dir / runs.HISTORY_FILE).read_text()
  best = (run_dir / f'{runs.BEST_CHECKPOINT}.index').read_bytes()

  helpers.train_with_flags(*helpers.TINY_FLAGS, '--adapter=rgb', f'--weights={notop_weights_file}',
                           f'--data_dir={tmp_path / "tfds"}')
  # Resumed after its last stage: straight to the test, nothing trained again.
  assert (run_dir / runs.METRICS_FILE).exists()
  assert (run_dir / runs.HISTORY_FILE).read_text() == history
  assert (run_dir / f'{runs.BEST_CHECKPOINT}.index').read_bytes() == best
  assert tf.saved_model.contains_saved_model(str(base / 'model'))  # saved_model.pb at its root
  assert (run_dir / runs.KERAS_MODEL_FILE).exists()
  assert not (run_dir / runs.EXPORT_DIR).exists()
  assert helpers.event_tags(str(base / 'logs'))  # the run's summaries, where Vertex AI reads


def test_an_unfinished_run_folder_with_the_same_settings_resumes(tmp_path):
  config = TrainConfig(run_dir=str(tmp_path))
  runs.record_config(config, '')
  runs.check_resumable(config)
  runs.check_resumable(TrainConfig(run_dir=str(tmp_path), num_gpus=4))  # hardware may change


# ---- A finished run as the start of another: --weights=RUN_DIR


def test_a_run_folder_starts_another_run_with_its_backbone(tiny_run):
  trained = backbone_of(runs.load_best_model(tiny_run)).get_weights()
  # Another adapter and head: only the backbone comes from the run.
  model = build_model(ModelConfig(image_size=32, adapter='conv', head='flatten'), (28, 28, 1), 5)
  assert weights.resolve(tiny_run) == tiny_run
  weights.load_into_backbone(backbone_of(model), tiny_run)
  for got, want in zip(backbone_of(model).get_weights(), trained):
    np.testing.assert_array_equal(got, want)


def test_a_folder_without_a_checkpoint_is_not_a_start(tmp_path):
  with pytest.raises(UserError, match='not a run with a checkpoint'):
    weights.resolve(str(tmp_path))


@pytest.mark.parametrize('error', [
    tf.errors.ResourceExhaustedError(None, None, 'tmp/best_temp; No space left on device'),
    OSError(errno.ENOSPC, 'No space left on device'),
])
def test_a_full_disk_ends_in_one_line_that_says_rerun_resumes(error):
  with pytest.raises(UserError, match='is full; free some space and rerun the same command'):
    with runs.full_disk_as_user_error('runs/x'):
      raise error


def test_out_of_memory_is_not_mistaken_for_a_full_disk():
  with pytest.raises(tf.errors.ResourceExhaustedError):
    with runs.full_disk_as_user_error('runs/x'):
      raise tf.errors.ResourceExhaustedError(None, None, 'OOM when allocating tensor')
