"""Faults as a hostile user meets them: each ends in one line and loses nothing finished."""
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import REPO, error_line, run_offline, run_python
from trainer import evaluate, runs
from trainer.errors import UserError

# A run long enough to interfere with: epochs of 40 steps on synthetic digits.
LONG_RUN = [
    '--dataset=synthetic', '--weights=none', '--image_size=32', '--batch_size=8',
    '--train_mode=transfer', '--epochs=3', '--steps_per_epoch=40', '--eval_steps=1', '--noexport'
]


def start(run_dir, log_path, *extra):
  with open(log_path, 'w') as log:
    return subprocess.Popen(
        [sys.executable, '-m', 'trainer.main', *LONG_RUN, *extra, f'--run_dir={run_dir}'],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            **os.environ, 'PYTHONUNBUFFERED': '1'
        })


def wait_for(condition, process, log_path, what):
  deadline = time.monotonic() + 600
  while not condition():
    assert process.poll() is None, f'the run ended before {what}:\n' + log_path.read_text()[-3000:]
    assert time.monotonic() < deadline, f'no {what} in 10 minutes'
    time.sleep(0.2)


@pytest.mark.slow
def test_a_second_trainer_on_a_folder_is_refused_and_sigterm_ends_the_first_in_one_line(tmp_path):
  run_dir, log = tmp_path / 'run', tmp_path / 'first.log'
  first = start(run_dir, log)
  try:
    # Keras prints "Epoch 2/3" once the first epoch's history row is written.
    wait_for(lambda: 'Epoch 2/3' in log.read_text(), first, log, 'the first epoch')
    second, _ = run_offline('trainer.main', *LONG_RUN, f'--run_dir={run_dir}')
    assert f'{run_dir} is in use by {socket.gethostname()} pid' in error_line(second)
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=120)
  finally:
    first.kill()
  assert first.returncode != 0
  lines = log.read_text().strip().splitlines()
  assert lines[-1] == ('error: interrupted; rerun the same command to resume from the last '
                       'finished epoch'), lines[-20:]
  assert 'Traceback' not in log.read_text()
  assert not (run_dir / runs.LOCK_FILE).exists()
  with open(run_dir / runs.HISTORY_FILE) as f:
    rows = list(csv.DictReader(f))
  assert rows and all(row['val_accuracy'] for row in rows)  # one writer: one header, whole rows


@pytest.mark.parametrize('argv, expected', [
    (['--learning_rate=nan'], '--learning_rate must be a finite number'),
    (['--warmup_epochs=inf'], '--warmup_epochs must be a finite number'),
    (['--dataset=../../etc/passwd'], 'is not a tensorflow-datasets name'),
    (['--flagfile=no/such.cfg'], 'check the path given to --flagfile'),
    (['positional'], "unexpected arguments ['positional']"),
    (['--freeze_batchnorm'], 'give pretrained --weights or drop --freeze_batchnorm'),
    (['--recalibrate_batchnorm=-1'], '--recalibrate_batchnorm=-1: -1 is not a non-negative'),
    (['--weight_decay=2'], '--weight_decay=2: 2.0 is not a number in the range'),
    (['--unaugmented_fraction=1'], '--unaugmented_fraction=1: 1.0 is not a number in the range'),
])
def test_bad_input_ends_in_one_line(tmp_path, argv, expected):
  result, _ = run_offline('trainer.main', '--weights=none', f'--run_dir={tmp_path / "run"}', *argv)
  assert expected in error_line(result)


@pytest.mark.parametrize('argv, expected', [
    (['--weights=/nonexistent.h5'], '--weights=/nonexistent.h5: no such file'),
    (['--weights=GARBAGE'], 'is not a readable .h5 file'),
    (['--batch_size=100000'], 'is larger than the 48000 training examples'),
    (['--image_size=100000'], '--image_size=100000: 100000 is not'),
])
def test_a_failed_start_leaves_no_settings_that_refuse_the_corrected_command(
    tmp_path, argv, expected):
  garbage = tmp_path / 'garbage.h5'
  garbage.write_text('not HDF5')
  argv = [arg.replace('GARBAGE', str(garbage)) for arg in argv]
  run_dir = tmp_path / 'run'
  result, _ = run_offline('trainer.main', '--dataset=synthetic', '--weights=none', *argv,
                          f'--run_dir={run_dir}')
  assert expected in error_line(result)
  assert not (run_dir / runs.CONFIG_FILE).exists()
  assert not (run_dir / runs.LOCK_FILE).exists()


def test_a_run_dir_under_a_file_or_an_unreachable_bucket_ends_in_one_line(tmp_path):
  (tmp_path / 'file').write_text('')
  with pytest.raises(UserError, match='cannot open the run folder .*file/sub .*not a directory'):
    with runs.locked(str(tmp_path / 'file' / 'sub')):
      pass
  # No network here (and in CI): the bucket's host does not resolve.
  with pytest.raises(UserError, match='cannot open the run folder gs://.*check the network'):
    with runs.locked('gs://no-such-bucket-of-this-project/run'):
      pass


def test_a_damaged_best_checkpoint_ends_the_export_in_its_one_line(tiny_run, tmp_path):
  run_dir = tmp_path / 'run'
  shutil.copytree(tiny_run, run_dir)
  data_file = next((run_dir / runs.CHECKPOINT_DIR).glob('best.data-*'))
  data_file.write_bytes(b'\xff' * data_file.stat().st_size)
  result, _ = run_offline('trainer.export', f'--run_dir={run_dir}')
  assert 'best does not load' in error_line(result)  # the last line: no warnings after it
  assert 'could not be found' not in result.stderr


def test_a_run_dir_that_is_a_file_ends_in_one_line(tmp_path):
  (tmp_path / 'file').write_text('')
  result, _ = run_offline('trainer.main', '--weights=none', f'--run_dir={tmp_path / "file"}')
  assert 'is a file, not a folder' in error_line(result)


DETERMINISTIC_RUN = [
    '--dataset=synthetic', '--weights=none', '--image_size=32', '--batch_size=8', '--epochs=2',
    '--steps_per_epoch=3', '--eval_steps=2', '--augment', '--dropout=0.2', '--seed=7',
    '--deterministic', '--noexport', '--recalibrate_batchnorm=2'
]


@pytest.mark.slow
def test_deterministic_runs_write_the_same_history_and_metrics(tmp_path):
  outputs = []
  for name in ('first', 'second'):
    run_dir = tmp_path / name
    result = run_python('-m',
                        'trainer.main',
                        *DETERMINISTIC_RUN,
                        f'--run_dir={run_dir}',
                        timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs.append(
        ((run_dir / runs.HISTORY_FILE).read_text(), (run_dir / runs.METRICS_FILE).read_text()))
  assert outputs[0] == outputs[1]


# ---- Kills: at the callback boundaries of an epoch's end, and during the export.

# Runs trainer.main with a callback that SIGKILLs the process (no clean-up at all) at the
# end of epoch 1, inserted at position KILL_AT of the run's callbacks; KILL_AT=export kills
# it right after the SavedModel is written instead.
_KILLING_MAIN = '''
import os, runpy, signal, sys
from trainer import callbacks, export
from trainer.keras_lib import keras
kill_at, sys.argv = sys.argv[1], ['trainer.main', *sys.argv[2:]]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
class Kill(keras.callbacks.Callback):
  def on_epoch_end(self, epoch, logs=None):
    die()
class KillAtTrainEnd(keras.callbacks.Callback):
  def on_train_end(self, logs=None):
    die()
if kill_at == 'export':
  export_model = export.export_model
  export.export_model = lambda *args: (export_model(*args), die())
elif kill_at == 'train_end':
  training_callbacks = callbacks.training_callbacks
  callbacks.training_callbacks = lambda *args: training_callbacks(*args) + [KillAtTrainEnd()]
else:
  training_callbacks = callbacks.training_callbacks
  callbacks.training_callbacks = lambda *args: (
      training_callbacks(*args)[:int(kill_at)] + [Kill()] + training_callbacks(*args)[int(kill_at):])
runpy.run_module('trainer.main', run_name='__main__', alter_sys=True)
'''
KILL_RUN = [
    '--dataset=synthetic', '--weights=none', '--image_size=32', '--batch_size=8',
    '--train_mode=transfer', '--epochs=2', '--steps_per_epoch=2', '--eval_steps=1'
]


@pytest.mark.slow
@pytest.mark.parametrize(
    'kill_at',
    [
        '2',  # after the epoch checks, before the best checkpoint
        '4',  # after the checkpoint and the history row, before TensorBoard
        '6',  # after everything but the epoch checkpoint: the history is ahead of it
        '7',  # after the epoch checkpoint
        'train_end',  # after every callback's end of training, before the run goes on
        'export',  # after the SavedModel, before metrics.json
    ])
def test_a_run_killed_anywhere_resumes_to_one_clean_history(tmp_path, kill_at):
  run_dir = tmp_path / 'run'
  # Only the kill that aims at the export needs one: it is written after the last epoch.
  run = [*KILL_RUN, f'--run_dir={run_dir}'] + ([] if kill_at == 'export' else ['--noexport'])
  killed = run_python('-c', _KILLING_MAIN, kill_at, *run, timeout=900)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert not (run_dir / runs.METRICS_FILE).exists()
  again = run_python('-m', 'trainer.main', *run, timeout=900)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'could not be found' not in again.stderr  # the checkpoints load without warnings
  if kill_at in ('7', 'train_end', 'export'):  # killed after epoch 1's checkpoint
    assert 'Epoch 1/2' not in again.stdout + again.stderr  # a finished epoch never trains again
  with open(run_dir / runs.HISTORY_FILE) as f:
    rows = list(csv.DictReader(f))
  assert [row['epoch'] for row in rows] == ['0', '1'], rows
  assert all(row['val_accuracy'] for row in rows)
  assert (run_dir / runs.METRICS_FILE).exists()
  assert (run_dir / runs.EXPORT_DIR).exists() == (kill_at == 'export')


# ---- Disks that refuse writes: a small tmpfs, mounted by the test where the machine lets it.


def _mount_tmpfs(path, size):
  path.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs',
                            str(path)],
                           capture_output=True,
                           check=False)
  if mounted.returncode:
    pytest.skip(f'cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}')


@pytest.fixture
def small_disk(tmp_path):
  """A folder on a tmpfs of its own, unmounted after the test."""
  disk = tmp_path / 'disk'
  _mount_tmpfs(disk, '256m')
  yield disk
  subprocess.run(['umount', '-l', str(disk)], check=False)


def _fill(disk):
  """Leaves no free byte on the tmpfs at `disk`."""
  subprocess.run(['dd', 'if=/dev/zero', f'of={disk}/filler', 'bs=1M'],
                 capture_output=True,
                 check=False)


def _read_only(disk):
  subprocess.run(['mount', '-o', 'remount,ro', str(disk)], check=True)


def test_a_read_only_run_folder_stops_training_in_one_line(small_disk):
  _read_only(small_disk)
  result, _ = run_offline('trainer.main', '--flagfile=configs/smoke.cfg',
                          f'--run_dir={small_disk / "run"}')
  assert 'Read-only file system' in error_line(result)


def test_a_full_or_read_only_disk_ends_the_export_in_one_line(tiny_run, small_disk):
  run_dir = small_disk / 'run'
  shutil.copytree(tiny_run, run_dir)
  _fill(small_disk)
  result, _ = run_offline('trainer.export', f'--run_dir={run_dir}')
  assert f'the disk holding {run_dir} is full' in error_line(result)
  assert 'the export is written again' in error_line(result)
  (small_disk / 'filler').unlink()
  _read_only(small_disk)
  result, _ = run_offline('trainer.export', f'--run_dir={run_dir}')
  assert f'cannot write in {run_dir}' in error_line(result)


def test_a_full_or_read_only_disk_ends_evaluate_after_its_report(tiny_run, small_disk, mock_mnist,
                                                                 capsys):
  run_dir = small_disk / 'run'
  shutil.copytree(tiny_run, run_dir)
  _fill(small_disk)
  with pytest.raises(UserError, match='is full.*the report above is written to TensorBoard too'):
    evaluate.evaluate_run(str(run_dir))
  assert 'Confusion matrix' in capsys.readouterr().out
  (small_disk / 'filler').unlink()
  _read_only(small_disk)
  with pytest.raises(UserError, match=f'cannot write in {run_dir}'):
    evaluate.evaluate_run(str(run_dir))
