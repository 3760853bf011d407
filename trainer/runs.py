"""Run folders: the one place that knows what a run writes where, and who may write it.

  config.json, flags.cfg   the settings; `--flagfile=RUN/flags.cfg` repeats the run
  dataset.json             the image shape and classes the model takes
  lock                     the process training in the folder, renewed while it runs
  logs/                    TensorBoard (logs/evaluate: trainer.evaluate's report)
  checkpoints/best*        the weights with the best validation accuracy, and that accuracy
  checkpoints/STAGE/       each stage's training state (weights, optimizer, step) at its last
                           two finished epochs: what a resumed run starts from
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
from typing import Dict, Iterator, List, Optional

import tensorflow as tf

from trainer import config as config_lib
from trainer import lease
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
# Two, so that a damaged newest one leaves an older one to resume from.
EPOCH_CHECKPOINTS_KEPT = 2
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


def run_id(run_dir: str) -> str:
  """The run folder's whole path (a URL for gs://): what tells one run from another."""
  return run_dir if '://' in run_dir else os.path.abspath(run_dir)


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


def stage_dir(run_dir: str, stage: str) -> str:
  """Where `stage`'s epoch checkpoints go."""
  return os.path.join(run_dir, CHECKPOINT_DIR, stage)


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


def _changed_fields(old: TrainConfig, new: TrainConfig) -> List[str]:
  """The flags whose values differ, except those a resumed run may change."""
  old_flags, new_flags = _flag_values(old), _flag_values(new)
  return [
      name for name in new_flags
      if name not in config_lib.RESUMABLE_CHANGES and old_flags.get(name) != new_flags[name]
  ]


def _flag_values(config: TrainConfig) -> Dict[str, object]:
  """{flag name: value}: the nested groups of settings (model, source) flattened, as their
  flags are."""
  values: Dict[str, object] = {}
  for name, value in dataclasses.asdict(config).items():
    values.update(value if isinstance(value, dict) else {name: value})
  return values


@contextlib.contextmanager
def locked(run_dir: str) -> Iterator[None]:
  """Holds the folder's lock file for the block: a second process on the folder is refused.

  The lock is a lease (trainer/lease.py): a lock whose holder died, here or on another
  machine or container, is taken over, at once or once its heartbeat has stopped.
  """
  with contextlib.ExitStack() as lock:
    with _opening(run_dir):
      if tf.io.gfile.exists(run_dir) and not tf.io.gfile.isdir(run_dir):
        raise UserError(f'--run_dir={run_dir} is a file, not a folder; choose another --run_dir')
      tf.io.gfile.makedirs(run_dir)
      lock.enter_context(lease.held(path(run_dir, LOCK_FILE)))
    yield


@contextlib.contextmanager
def _opening(run_dir: str) -> Iterator[None]:
  """What can go wrong in claiming the run folder, each in one line."""
  try:
    yield
  except lease.Held as e:
    raise UserError(f'{run_dir} is in use by {e} (its lock file is renewed every '
                    f'{lease.HEARTBEAT_SECONDS:.0f} s while it runs); wait for that run to end, '
                    'or give this one another --run_dir') from None
  except tf.errors.UnimplementedError:
    raise UserError(f'--run_dir={run_dir}: this TensorFlow cannot open such paths; for gs:// '
                    "run folders, pip install 'densenet-finetune[gcs]'") from None
  except (tf.errors.OpError, OSError) as e:
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    fix = ('check the network, the bucket\'s name and your credentials (gcloud auth '
           'application-default login)' if '://' in run_dir else
           'choose a --run_dir on a disk you can write to, under a folder, not a file')
    raise UserError(f'cannot open the run folder {run_dir} ({reason}); {fix}') from None


RESUMES = 'the run resumes from its last finished epoch'


@contextlib.contextmanager
def resources_as_user_errors(run_dir: str, after_rerun: str = RESUMES) -> Iterator[None]:
  """A full disk, memory, or a run folder that refuses writes ends the command in one line;
  `after_rerun` says what rerunning it does. After a full disk, what was written before it
  stays (a half-written checkpoint is replaced by the next save)."""
  try:
    yield
  except (tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError, OSError) as e:
    reason = str(e).strip().splitlines()[0][:200]
    if getattr(e, 'errno', None) == errno.ENOSPC or 'No space left' in str(e):
      raise UserError(f'the disk holding {run_dir} is full; free some space and rerun the same '
                      f'command: {after_rerun}') from None
    if isinstance(e, tf.errors.ResourceExhaustedError):
      raise UserError(f'out of memory ({reason}); lower --batch_size or --image_size, then '
                      f'rerun: {after_rerun}') from None
    if isinstance(e, (tf.errors.PermissionDeniedError, PermissionError)) or getattr(
        e, 'errno', None) == errno.EROFS:
      raise UserError(f'cannot write in {run_dir} ({reason}); make it writable (or copy the '
                      f'folder somewhere writable) and rerun: {after_rerun}') from None
    raise


def record_config(run_dir: str, config: TrainConfig, flags_text: str) -> None:
  """Writes config.json and flags.cfg. Training does so once its first step has run, so a
  start that fails before then leaves nothing that would refuse the corrected command."""
  tf.io.gfile.makedirs(run_dir)
  _write(path(run_dir, CONFIG_FILE), json.dumps(dataclasses.asdict(config), indent=2))
  _write(path(run_dir, FLAGS_FILE), flags_text)


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
                       tuple(fields['class_names']), fields.get('aspect'))
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


# ---- Checkpoints: the best one, and each stage's training state by epoch


def save_best(model: keras.Model, run_dir: str, val_accuracy: float) -> None:
  """Writes the best checkpoint with its validation accuracy in the same write, so a resumed
  run compares new epochs with exactly what the checkpoint holds."""
  tf.train.Checkpoint(model=model, val_accuracy=tf.Variable(val_accuracy, dtype=tf.float64)).write(
      path(run_dir, BEST_CHECKPOINT))


def best_validation_accuracy(run_dir: str) -> Optional[float]:
  """The validation accuracy of the run's best checkpoint, or None if it has none yet."""
  checkpoint = path(run_dir, BEST_CHECKPOINT)
  if not checkpoint_exists(checkpoint):
    return None
  value = tf.Variable(0.0, dtype=tf.float64)
  try:
    tf.train.Checkpoint(val_accuracy=value).read(checkpoint).expect_partial()
  except (tf.errors.OpError, ValueError, IndexError) as e:
    raise _damaged(
        checkpoint, e, ': the file is damaged; restore the folder from a copy, or '
        'delete the best checkpoint to let the next epoch write a new one') from None
  return float(value.numpy())


def epoch_checkpoints(model: keras.Model, run_dir: str, stage: str) -> tf.train.CheckpointManager:
  """Saves `stage`'s whole training state: the model, its optimizer and the optimizer's step
  count, from which a resumed run knows its epoch (as Model Garden's trainers do)."""
  return tf.train.CheckpointManager(tf.train.Checkpoint(model=model),
                                    stage_dir(run_dir, stage),
                                    max_to_keep=EPOCH_CHECKPOINTS_KEPT)


def restore_training_state(model: keras.Model, run_dir: str, stage: str) -> int:
  """Restores `stage`'s newest epoch checkpoint into the compiled `model` (weights, optimizer
  state and step count); returns the stage's steps done, 0 if it has no checkpoint."""
  state = tf.train.get_checkpoint_state(stage_dir(run_dir, stage))
  saved = [p for p in (state.all_model_checkpoint_paths if state else []) if checkpoint_exists(p)]
  if not saved:
    return 0
  # Built now, so its slots exist and take the saved values instead of a deferred restore.
  model.optimizer.build(model.trainable_variables)
  newest = saved[-1]
  try:
    # expect_partial: the manager also saves its own save counter, which nothing restores.
    tf.train.Checkpoint(model=model).read(newest).expect_partial().assert_existing_objects_matched()
  except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:
    fix = (f'delete {newest}.* to resume from the one before it, {saved[-2]}' if len(saved) > 1 else
           f'delete {stage_dir(run_dir, stage)} to train stage {stage} again from its start '
           '(the best checkpoint and the history are kept)')
    raise _damaged(newest, e, f': the file is damaged; {fix}') from None
  return int(model.optimizer.iterations.numpy())


def drop_training_state(run_dir: str, stages: List[str]) -> None:
  """Deletes the stages' epoch checkpoints of a finished run: a finished run is never resumed."""
  for stage in stages:
    if tf.io.gfile.exists(stage_dir(run_dir, stage)):
      tf.io.gfile.rmtree(stage_dir(run_dir, stage))


def _damaged(checkpoint, error, why_and_fix):
  reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
  return UserError(f'{checkpoint} does not load ({reason}){why_and_fix}')


def trim_history(run_dir: str, epochs: int) -> None:
  """Keeps the first `epochs` rows of history.csv: a run killed after it logged an epoch but
  before that epoch's checkpoint trains the epoch again, and must not log it twice."""
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
  """Loads the best checkpoint, or another `save_best` wrote, into every variable of `model`.

  A damaged file, or a checkpoint of another model (config.json edited after training,
  another adapter or class count), ends in one line instead of a model left half random.
  """
  try:
    tf.train.Checkpoint(
        model=model).read(checkpoint).expect_partial().assert_existing_objects_matched()
  # IndexError: the checkpoint reader's "Read less bytes than requested" for a short file.
  except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:
    raise _damaged(
        checkpoint, e, ': the checkpoint files are damaged, or config.json/dataset.json no '
        'longer match them; restore the folder from a copy, or train again') from None
