"""The run folder: its lock, what a resume trusts, what a finished run may record."""
import csv
import dataclasses
import errno
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import helpers
from helpers import REPO
from trainer import callbacks, lease, runs, weights
from trainer.config import ModelConfig, TrainConfig
from trainer.errors import UserError
from trainer.keras_lib import keras
from trainer.model import backbone_of, build_model

# ---- The lock


def test_a_second_process_on_a_folder_is_refused_naming_the_holder(tmp_path):
  with runs.locked(str(tmp_path)):
    with pytest.raises(UserError, match=f'in use by {socket.gethostname()} pid {os.getpid()}'):
      with runs.locked(str(tmp_path)):
        pass
  assert not (tmp_path / runs.LOCK_FILE).exists()  # released when the run ends


def write_lock(run_dir, **fields):
  holder = {**dataclasses.asdict(lease.this_process()), **fields}
  (run_dir / runs.LOCK_FILE).write_text(json.dumps(holder))


def test_the_lock_of_a_dead_local_process_is_taken_over(tmp_path):
  write_lock(tmp_path, pid=2**22 + 1)  # above Linux's largest pid
  with runs.locked(str(tmp_path)):
    assert json.loads((tmp_path / runs.LOCK_FILE).read_text())['pid'] == os.getpid()


def test_a_reused_pid_of_this_host_does_not_hold_a_lock(tmp_path):
  # The same host name, boot and namespace, and pid 1 runs, but it is not the process that locked.
  write_lock(tmp_path, pid=1, started=lease.start_time(1) + 1)
  with runs.locked(str(tmp_path)):
    assert json.loads((tmp_path / runs.LOCK_FILE).read_text())['pid'] == os.getpid()


def test_a_live_process_of_this_host_keeps_its_lock_at_once(tmp_path, monkeypatch):
  monkeypatch.setattr(lease, 'LEASE_SECONDS', 3600)  # the decision must not wait for a lease
  write_lock(tmp_path, pid=1, started=lease.start_time(1))  # pid 1 as it runs now
  with pytest.raises(UserError, match='in use by .* pid 1'):
    with runs.locked(str(tmp_path)):
      pass


def test_the_lock_of_another_host_holds_while_it_beats_and_lapses_when_it_stops(
    tmp_path, monkeypatch):
  monkeypatch.setattr(lease, 'LEASE_SECONDS', 1.5)
  write_lock(tmp_path, host='another-host', pid=12)
  beating = threading.Event()

  def beat():
    for n in range(1, 10):
      time.sleep(0.3)
      write_lock(tmp_path, host='another-host', pid=12, beat=n)
    beating.set()

  threading.Thread(target=beat, daemon=True).start()
  with pytest.raises(UserError, match='in use by another-host pid 12'):
    with runs.locked(str(tmp_path)):
      pass
  beating.wait()
  with runs.locked(str(tmp_path)):  # no heartbeat for the lease: a new container takes over
    assert json.loads((tmp_path / runs.LOCK_FILE).read_text())['host'] == socket.gethostname()


def test_the_holder_renews_its_lock_while_it_runs(tmp_path, monkeypatch):
  monkeypatch.setattr(lease, 'HEARTBEAT_SECONDS', 0.1)
  with runs.locked(str(tmp_path)):
    time.sleep(0.5)
    assert json.loads((tmp_path / runs.LOCK_FILE).read_text())['beat'] >= 2


_LOCK_AND_WAIT = """
import sys, time
from trainer import lease, runs
lease.HEARTBEAT_SECONDS, lease.LEASE_SECONDS = 0.5, 3
with runs.locked(sys.argv[1]):
  print('locked', flush=True)
  time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.skipif(subprocess.run(['unshare', '--pid', '--fork', '--mount-proc', 'true'],
                                   capture_output=True,
                                   check=False).returncode != 0,
                    reason='unshare --pid is not allowed here (needs root or user namespaces)')
def test_a_lock_left_by_a_killed_pid_1_is_taken_over_by_the_next_pid_1(tmp_path):
  """A restarted Kubernetes container, or a rerun docker run: the same host, PID 1 again, in
  a new PID namespace. While the first lives, the second is refused; once it is killed,
  its lease lapses (3 s here, renewed every 0.5 s) and the second takes over."""
  # --kill-child: the namespace's PID 1 dies with unshare, even by SIGKILL.
  as_pid_1 = [
      'unshare', '--pid', '--fork', '--mount-proc', '--kill-child', sys.executable, '-c',
      _LOCK_AND_WAIT,
      str(tmp_path)
  ]
  start = lambda: subprocess.Popen(
      as_pid_1, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  first = start()
  try:
    assert first.stdout.readline().strip() == 'locked', first.stderr.read()
    assert json.loads((tmp_path / runs.LOCK_FILE).read_text())['pid'] == 1
    refused = start()
    _, errors = refused.communicate(timeout=120)
    assert 'in use by' in errors, errors[-2000:]
  finally:
    first.kill()
  first.wait()
  second = start()
  try:
    assert second.stdout.readline().strip() == 'locked', second.stderr.read()
  finally:
    second.kill()
    second.wait()


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


def test_a_resumed_stage_restores_the_step_and_weights_of_its_last_finished_epoch(tmp_path):
  run_dir = str(tmp_path)
  features, labels = np.random.default_rng(0).normal(size=(8, 2)), np.zeros(8)
  trained = tiny_model()
  assert runs.restore_training_state(trained, run_dir, 'finetune') == 0  # nothing saved yet
  with pytest.raises(KeyboardInterrupt):
    trained.fit(features,
                labels,
                batch_size=4,
                epochs=5,
                verbose=0,
                callbacks=[callbacks.EpochCheckpoint(run_dir, 'finetune'),
                           KillAtEpoch(2)])
  resumed = tiny_model()
  assert runs.restore_training_state(resumed, run_dir, 'finetune') == 2 * 2  # 2 epochs, 2 steps
  for got, want in zip(resumed.get_weights(), trained.get_weights()):
    np.testing.assert_array_equal(got, want)
  # The optimizer's moments too, not only the weights: the next step is the one it would be.
  for got, want in zip(resumed.optimizer.variables, trained.optimizer.variables):
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_a_damaged_epoch_checkpoint_names_the_file_and_the_one_before_it(tmp_path):
  run_dir = str(tmp_path)
  tiny_model().fit(np.zeros((4, 2)),
                   np.zeros(4),
                   epochs=3,
                   verbose=0,
                   callbacks=[callbacks.EpochCheckpoint(run_dir, 'finetune')])
  newest = tf.train.latest_checkpoint(runs.stage_dir(run_dir, 'finetune'))
  data_file = tf.io.gfile.glob(newest + '.data-*')[0]
  with open(data_file, 'r+b') as f:
    f.write(b'\xff' * 64)  # flipped bytes: the checksum no longer matches
  with pytest.raises(UserError,
                     match=f'{newest} does not load .*delete {newest}.* to resume from '
                     'the one before it'):
    runs.restore_training_state(tiny_model(), run_dir, 'finetune')
  for path in tf.io.gfile.glob(newest + '.*'):
    os.remove(path)
  assert runs.restore_training_state(tiny_model(), run_dir, 'finetune') == 2  # epoch 2 of 3


def test_the_best_checkpoint_carries_the_accuracy_it_was_saved_at(tmp_path):
  assert runs.best_validation_accuracy(str(tmp_path)) is None
  runs.save_best(tiny_model(), str(tmp_path), 0.625)
  assert runs.best_validation_accuracy(str(tmp_path)) == 0.625


def test_history_rows_of_epochs_after_the_checkpoint_are_dropped(tmp_path):
  history = tmp_path / runs.HISTORY_FILE
  history.write_text('epoch,loss,val_accuracy\n0,2.0,0.5\n1,1.0,0.6\n2,0.5,0.7\n')
  runs.trim_history(str(tmp_path), 2)
  with open(history) as f:
    assert [row['epoch'] for row in csv.DictReader(f)] == ['0', '1']
  runs.trim_history(str(tmp_path), 5)  # fewer rows than that: nothing to drop
  assert len(history.read_text().splitlines()) == 3


# ---- What a run records


def test_metrics_json_holds_only_finite_numbers(tmp_path):
  with pytest.raises(UserError, match='not finite.*lower --learning_rate'):
    runs.write_metrics(str(tmp_path), {'test_loss': math.nan, 'test_accuracy': 0.1})
  assert not (tmp_path / runs.METRICS_FILE).exists()  # the run does not count as finished
  runs.write_metrics(str(tmp_path), {'test_loss': 0.1, 'test_accuracy': 0.9})
  assert json.loads((tmp_path / runs.METRICS_FILE).read_text())['test_accuracy'] == 0.9


def test_a_non_finite_loss_stops_training_naming_the_epoch(tmp_path):
  features, labels = np.zeros((8, 2)), np.zeros(8)
  features[5] = np.nan  # the third batch of two
  with pytest.raises(UserError, match='became nan in epoch 1.*lower --learning_rate'):
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
    (lambda run: _edit_config(run, lambda c: c['model'].update(image_size=8)),
     'image_size=8 is below its least value, 32'),
    (lambda run: _edit_config(run, lambda c: c['model'].update(image_size='big')),
     "image_size='big' is not a whole number"),
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
  runs.record_config(config.run_dir, config, '')
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
    with runs.resources_as_user_errors('runs/x'):
      raise error


def test_out_of_memory_is_not_mistaken_for_a_full_disk():
  with pytest.raises(UserError, match='out of memory .*lower --batch_size or --image_size'):
    with runs.resources_as_user_errors('runs/x'):
      raise tf.errors.ResourceExhaustedError(None, None, 'OOM when allocating tensor')
