"""Run folders: the one place that knows what a run writes where, and who may write it.

  config.json, flags.cfg   the settings; `--flagfile=RUN/flags.cfg` repeats the run
  dataset.json             the image shape and classes the model takes
  lock                     host and pid of the process training in the folder
  logs/                    TensorBoard (logs/evaluate: trainer.evaluate's report)
  checkpoints/best*        the weights with the best validation accuracy
  checkpoints/after_STAGE* the weights at the end of each finished stage
  backup/STAGE/            BackupAndRestore's state while a stage is in flight
  history.csv              per-epoch metrics, appended across resumes
  metrics.json             test results; its presence marks the run as finished
  export/                  the SavedModel (on Vertex AI: AIP_MODEL_DIR instead)
  model.keras, model.tflite the Keras model (built-in layers only) and the TFLite one

An existing folder is resumed, but only by the same configuration: a different one,
or a finished run, is refused rather than overwritten.

On Vertex AI, with a job output folder (baseOutputDirectory, BASE), the job gets
AIP_MODEL_DIR=BASE/model/, where a model import and a prebuilt serving container read
saved_model.pb at the root. The SavedModel goes there, and the run folder, by default,
is BASE/run: the same for every restart of the job and every job given the same folder,
so they resume it.
"""
import contextlib
import csv
import dataclasses
import datetime
import errno
import io
import json
import math
import os
import posixpath
import socket
from typing import Dict, Iterator, Optional

import tensorflow as tf

from trainer import config as config_lib
from trainer.config import DatasetInfo, TrainConfig
from trainer.errors import UserError
from trainer.keras_lib import keras
from trainer.model import build_model

CONFIG_FILE = 'config.json'
FLAGS_FILE = 'flags.cfg'
DATASET_FILE = 'dataset.json'
LOCK_FILE = 'lock'
METRICS_FILE = 'metrics.json'
HISTORY_FILE = 'history.csv'
LOG_DIR = 'logs'
EVALUATE_LOG_DIR = os.path.join(LOG_DIR, 'evaluate')
CHECKPOINT_DIR = 'checkpoints'
BEST_CHECKPOINT = os.path.join(CHECKPOINT_DIR, 'best')
BACKUP_DIR = 'backup'
EXPORT_DIR = 'export'
KERAS_MODEL_FILE = 'model.keras'
TFLITE_FILE = 'model.tflite'
# Vertex AI custom jobs name the folder for the model, and the folder its TensorBoard
# instance reads, in these variables.
VERTEX_MODEL_DIR = 'AIP_MODEL_DIR'
VERTEX_TENSORBOARD_DIR = 'AIP_TENSORBOARD_LOG_DIR'
VERTEX_RUN_DIR = 'run'  # beside AIP_MODEL_DIR: BASE/run


def path(run_dir: str, name: str) -> str:
  """`name` (one of the names above) inside `run_dir`."""
  return os.path.join(run_dir, name)


def log_dir(run_dir: str) -> str:
  """Where TensorBoard logs go: RUN/logs, or Vertex AI's TensorBoard folder when the run
  folder is the one for the Vertex AI job."""
  if os.environ.get(VERTEX_TENSORBOARD_DIR) and run_dir == vertex_run_dir():
    return os.environ[VERTEX_TENSORBOARD_DIR]
  return path(run_dir, LOG_DIR)


def export_dir(run_dir: str) -> str:
  """Where the SavedModel goes: AIP_MODEL_DIR in a Vertex AI job that has one, else RUN/export."""
  return os.environ.get(VERTEX_MODEL_DIR) or path(run_dir, EXPORT_DIR)


def run_dir_of_export(export_dir: str) -> Optional[str]:
  """The run folder whose SavedModel is `export_dir` (RUN/export, or a Vertex AI job's
  BASE/model for BASE/run), or None if no run folder is there."""
  parent = posixpath.dirname(export_dir.rstrip('/'))
  for run_dir in (parent, posixpath.join(parent, VERTEX_RUN_DIR)):
    if tf.io.gfile.exists(path(run_dir, CONFIG_FILE)):
      return run_dir
  return None


def vertex_run_dir() -> Optional[str]:
  """BASE/run for a Vertex AI job whose AIP_MODEL_DIR is BASE/model/; None outside one."""
  model_dir = os.environ.get(VERTEX_MODEL_DIR)
  if not model_dir:
    return None
  # posixpath: gs:// paths use slashes whatever the machine's separator.
  return posixpath.join(posixpath.dirname(model_dir.rstrip('/')), VERTEX_RUN_DIR)


def stage_checkpoint(run_dir: str, stage: str) -> str:
  return os.path.join(run_dir, CHECKPOINT_DIR, f'after_{stage}')


def backup_dir(run_dir: str, stage: str) -> str:
  return os.path.join(run_dir, BACKUP_DIR, stage)


def checkpoint_exists(prefix: str) -> bool:
  return tf.io.gfile.exists(prefix + '.index')


def default_run_dir(run_name: str = '') -> str:
  """runs/<run_name or the start time>, or the run folder of a Vertex AI job."""
  vertex = vertex_run_dir()
  if not run_name and vertex:
    return vertex
  return os.path.join('runs', run_name or datetime.datetime.now().strftime('%Y%m%d-%H%M%S'))


# ---- Claiming a folder: checks first, then the lock, then the settings


def check_resumable(config: TrainConfig) -> None:
  """Refuses a finished or differently configured run folder; writes nothing."""
  run_dir = config.run_dir
  if tf.io.gfile.exists(path(run_dir, METRICS_FILE)):
    raise UserError(f'{run_dir} holds a finished run; choose a new --run_name or --run_dir, or '
                    f'inspect it with python -m trainer.evaluate --run_dir={run_dir}')
  if tf.io.gfile.exists(path(run_dir, CONFIG_FILE)):
    changed = _changed_fields(load_config(run_dir), config)
    if changed:
      raise UserError(f'{run_dir} was started with other settings ({", ".join(changed)}); resume '
                      f'it with --flagfile={path(run_dir, FLAGS_FILE)} or choose a new '
                      '--run_name')


def _changed_fields(old: TrainConfig, new: TrainConfig):
  old_fields, new_fields = dataclasses.asdict(old), dataclasses.asdict(new)
  return [
      k for k in new_fields
      if k not in config_lib.RESUMABLE_CHANGES and old_fields.get(k) != new_fields[k]
  ]


@contextlib.contextmanager
def locked(run_dir: str) -> Iterator[None]:
  """Holds the folder's lock file for the block: a second process on the folder is refused.

  A lock left by a process of this host that no longer runs is taken over. On local
  disks the lock is created atomically; on gs:// it is created only if absent, checked
  just before, which leaves a window of a moment, not of a run.
  """
  if tf.io.gfile.exists(run_dir) and not tf.io.gfile.isdir(run_dir):
    raise UserError(f'--run_dir={run_dir} is a file, not a folder; choose another --run_dir')
  tf.io.gfile.makedirs(run_dir)
  lock = path(run_dir, LOCK_FILE)
  me = f'{socket.gethostname()} {os.getpid()}'
  if not _create_if_absent(lock, me):
    holder = _read(lock).strip()
    if not _is_stale(holder):
      raise UserError(f'{run_dir} is in use by process {holder or "(unknown)"} (host pid); wait '
                      f'for it to end, or if it is gone, delete {lock}')
    tf.io.gfile.remove(lock)
    if not _create_if_absent(lock, me):
      raise UserError(f'{run_dir} was just taken by another process; run one trainer per folder')
  try:
    yield
  finally:
    if _read(lock).strip() == me:
      tf.io.gfile.remove(lock)


def _create_if_absent(file_path: str, text: str) -> bool:
  if '://' not in file_path:
    try:
      fd = os.open(file_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    return True
  if tf.io.gfile.exists(file_path):
    return False
  _write(file_path, text)
  return True


def _is_stale(holder: str) -> bool:
  """True for a lock of this host whose process is gone."""
  host, _, pid = holder.partition(' ')
  if host != socket.gethostname() or not pid.isdigit():
    return False
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return True
  except PermissionError:
    return False
  return False


@contextlib.contextmanager
def full_disk_as_user_error(run_dir: str) -> Iterator[None]:
  """A full disk ends the run in one line; what was written before it stays, and a rerun
  with space resumes (a half-written checkpoint is replaced by the next save)."""
  try:
    yield
  except (tf.errors.ResourceExhaustedError, OSError) as e:
    # ResourceExhaustedError is also out-of-memory; only a full disk is the user's to fix here.
    if getattr(e, 'errno', None) != errno.ENOSPC and 'No space left' not in str(e):
      raise
    raise UserError(f'the disk holding {run_dir} is full; free some space and rerun the same '
                    'command: the run resumes from its last finished epoch') from None


def record_config(config: TrainConfig, flags_text: str) -> None:
  """Writes config.json and flags.cfg: only once every check of the run has passed, so a
  failed start leaves nothing that would refuse the corrected command."""
  tf.io.gfile.makedirs(config.run_dir)
  _write(path(config.run_dir, CONFIG_FILE), json.dumps(dataclasses.asdict(config), indent=2))
  _write(path(config.run_dir, FLAGS_FILE), flags_text)


def load_config(run_dir: str) -> TrainConfig:
  config_path = path(run_dir, CONFIG_FILE)
  if not tf.io.gfile.exists(config_path):
    raise UserError(f'{run_dir} is not a run folder (no {CONFIG_FILE}); give the folder that '
                    'python -m trainer.main wrote, e.g. runs/NAME')
  try:
    return config_lib.train_config_from_dict(json.loads(_read(config_path)))
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f'{config_path} is not a config this trainer wrote ({type(e).__name__}: '
                    f'{e}); restore it from flags.cfg by rerunning with '
                    f'--flagfile={path(run_dir, FLAGS_FILE)} in a new folder') from None


# ---- What a run records


def write_dataset_info(run_dir: str, info: DatasetInfo) -> None:
  _write(path(run_dir, DATASET_FILE), json.dumps(dataclasses.asdict(info), indent=2))


def read_dataset_info(run_dir: str) -> DatasetInfo:
  info_path = path(run_dir, DATASET_FILE)
  if not tf.io.gfile.exists(info_path):
    raise UserError(f'{run_dir} has no {DATASET_FILE} (the image shape and classes its model '
                    'takes); it was started before runs recorded them: train it again')
  try:
    fields = json.loads(_read(info_path))
    info = DatasetInfo(tuple(fields['image_shape']), int(fields['num_classes']),
                       tuple(fields['class_names']))
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f'{info_path} is damaged ({type(e).__name__}: {e}); train the run again') \
        from None
  if len(info.image_shape) != 3 or len(info.class_names) != info.num_classes:
    raise UserError(f'{info_path} is inconsistent (shape {info.image_shape}, {info.num_classes} '
                    f'classes, {len(info.class_names)} names); train the run again')
  return info


def write_metrics(run_dir: str, metrics: Dict[str, float]) -> None:
  """metrics.json, which marks the run finished: finite numbers only, so it is strict JSON."""
  bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
  if bad:
    raise UserError(f'the test metrics are not finite ({bad}): the model diverged; start a new '
                    'run with a lower --learning_rate')
  _write(path(run_dir, METRICS_FILE), json.dumps(metrics, indent=2, allow_nan=False))


# ---- Resuming: what the folder says about finished epochs


def best_validation_accuracy(run_dir: str) -> Optional[float]:
  """The best val_accuracy in the run's history so far, or None for a new run."""
  values = [float(row['val_accuracy']) for row in _history_rows(run_dir) if row.get('val_accuracy')]
  return max(values, default=None)


def backed_up_epoch(run_dir: str, stage: str) -> Optional[int]:
  """The last epoch (0-based) BackupAndRestore saved for `stage`, or None if it saved none.

  Read where tf_keras's BackupAndRestore keeps it (its WorkerTrainingState): the `chief`
  subfolder, variable `ckpt_saved_epoch`; tests/test_runs.py checks both against tf_keras.
  """
  latest = tf.train.latest_checkpoint(os.path.join(backup_dir(run_dir, stage), 'chief'))
  if latest is None:
    return None
  reader = tf.train.load_checkpoint(latest)
  return int(reader.get_tensor('ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE'))


def trim_history(run_dir: str, epochs: int) -> None:
  """Keeps the first `epochs` rows of history.csv: a run killed after it logged an epoch
  but before the backup saved it trains that epoch again, and must not log it twice."""
  rows = _history_rows(run_dir)
  if len(rows) <= epochs:
    return
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows[:epochs])
  _write(path(run_dir, HISTORY_FILE), out.getvalue())


def _history_rows(run_dir: str):
  history = path(run_dir, HISTORY_FILE)
  if not tf.io.gfile.exists(history):
    return []
  return list(csv.DictReader(io.StringIO(_read(history))))


def _read(file_path: str) -> str:
  with tf.io.gfile.GFile(file_path) as f:
    return f.read()


def _write(file_path: str, text: str):
  # tf.io.gfile: gs:// run folders too.
  with tf.io.gfile.GFile(file_path, 'w') as f:
    f.write(text)


# ---- The model a run trained


def load_best_model(run_dir: str) -> keras.Model:
  """The run's model with its best checkpoint's weights, built from the run folder alone."""
  config = load_config(run_dir)
  checkpoint = path(run_dir, BEST_CHECKPOINT)
  if not checkpoint_exists(checkpoint):
    raise UserError(f'{run_dir} has no checkpoint yet ({checkpoint}.index is missing); wait for '
                    'its first epoch to finish, or train it with python -m trainer.main')
  info = read_dataset_info(run_dir)
  model = build_model(config.model, info.image_shape, info.num_classes)
  restore(model, checkpoint)
  return model


def restore(model: keras.Model, checkpoint: str) -> None:
  """Loads `checkpoint` into every variable of `model`; ignores the optimizer's state in it.

  A damaged file, or a checkpoint of another model (config.json edited after training,
  another adapter or class count), ends in one line instead of a model left half random.
  """
  try:
    model.load_weights(checkpoint).expect_partial().assert_existing_objects_matched()
  # IndexError: the checkpoint reader's "Read less bytes than requested" for a short file.
  except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise UserError(
        f'{checkpoint} does not load into the model its run folder describes '
        f'({reason}): the checkpoint files are damaged, or config.json/dataset.json '
        'no longer match them; restore the folder from a copy, or train again') from None
