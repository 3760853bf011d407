"""Preemption: a run killed after its first epoch, started again with the same command,
goes on at the second epoch from the backup in its run folder."""
import csv
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
# Epochs of 40 steps: the second lasts seconds, plenty of time to kill the run in it.
# A frozen backbone and no export keep the two runs short; resuming works the same.
FLAGS = [
    '--dataset=synthetic', '--weights=none', '--image_size=32', '--batch_size=8',
    '--train_mode=transfer', '--epochs=2', '--steps_per_epoch=40', '--eval_steps=1', '--noexport'
]


def start_trainer(run_dir, log_path):
  """`python -m trainer.main` in the background, its output in a file (a pipe nobody reads
  while we watch the run could fill up and stall it)."""
  with open(log_path, 'w') as log:
    return subprocess.Popen([sys.executable, '-m', 'trainer.main', *FLAGS, f'--run_dir={run_dir}'],
                            cwd=ROOT,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            env={
                                **os.environ, 'PYTHONUNBUFFERED': '1'
                            })


def history_epochs(run_dir):
  path = os.path.join(run_dir, 'history.csv')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [int(row['epoch']) for row in csv.DictReader(f)]


@pytest.mark.slow
def test_a_killed_run_resumes_at_the_epoch_after_its_last_finished_one(tmp_path):
  run_dir = str(tmp_path / 'run')

  # ---- First run: SIGKILL (no chance to clean up) once the second epoch has begun; Keras
  # prints "Epoch 2/2" after every callback has finished with the first.
  first_log = tmp_path / 'first.log'
  first = start_trainer(run_dir, first_log)
  deadline = time.monotonic() + 600
  while 'Epoch 2/2' not in first_log.read_text():
    assert first.poll() is None, 'the run ended before its second epoch:\n' + first_log.read_text()
    assert time.monotonic() < deadline, 'no epoch finished in 10 minutes'
    time.sleep(0.1)
  first.kill()
  first.wait()
  assert history_epochs(run_dir) == [0], 'the run finished its second epoch before the kill'
  assert not os.path.exists(os.path.join(run_dir, 'metrics.json'))

  # ---- The same command again.
  second_log = tmp_path / 'second.log'
  second = start_trainer(run_dir, second_log)
  second.wait(timeout=600)
  out = second_log.read_text()
  assert second.returncode == 0, out[-3000:]
  assert 'Epoch 2/2' in out and 'Epoch 1/2' not in out, out[-3000:]
  assert history_epochs(run_dir) == [0, 1]
  assert os.path.exists(os.path.join(run_dir, 'metrics.json'))
