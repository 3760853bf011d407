"""The benchmarks run end to end at quick sizes: the tables' rows come out filled, and each
table is written as the record it is printed from."""
import json
import os
import re
import shutil
import subprocess
import time

import pytest
import tensorflow as tf
from PIL import Image

import helpers
from benchmarks import cases, measure, own_images, recalibration, tables
from trainer import folder


@pytest.mark.slow
def test_jobs_suite_measures_memory_and_time_to_accuracy_on_both_sides(tmp_path):
  idx_dir = helpers.write_idx_dir(tmp_path / 'idx',
                                  *helpers.small_digits(1000, seed=0),
                                  *helpers.small_digits(200, seed=1),
                                  compress=True)
  table_file = tmp_path / 'table.md'
  result = helpers.run_python('-m',
                              'benchmarks.run',
                              '--suite=jobs',
                              '--quick',
                              f'--dataset=idx:{idx_dir}',
                              f'--mnist_idx={idx_dir}',
                              '--level=0',
                              f'--output={table_file}',
                              '--record',
                              f'--records_dir={tmp_path / "records"}',
                              timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  table = table_file.read_text()
  # The printed table is its record's.
  record = json.loads((tmp_path / 'records' / 'jobs' / 'quick.json').read_text())
  assert table == tables.markdown(record) + '\n'
  assert record['claim'] == 'jobs' and record['suite'] == 'jobs' and record['kind'] == 'quick'
  assert '--suite=jobs' in record['command'] and record['commit'] and record['sizes']

  memory = re.search(r'\| Whole job, peak resident memory [^|]* \| ([\d.]+) \| ([\d.]+) \|', table)
  assert memory, table
  assert all(float(gib) > 0.1 for gib in memory.groups())
  # Level 0: both sides reach it after their first epoch, so both have a time and a ratio.
  reached = re.search(r'\| Time to 0\.0% validation accuracy [^|]* \| (\d+) \| (\d+) \| ([\d.]+)x',
                      table)
  assert reached, table
  # Where each job's memory goes, phase by phase.
  for phase in ('data', 'model', 'training and validation', 'test', 'export'):
    assert f'{phase} ' in table


def test_recalibration_evaluates_a_finished_run_as_saved_and_recalibrated(tiny_run, mock_mnist):
  accuracies = recalibration.validation_accuracies(tiny_run, [1, 2])
  assert len(accuracies) == 3 and all(0 <= accuracy <= 1 for accuracy in accuracies)


# ---- Records: each table a record, the printed table made from it


def test_a_suite_record_renders_the_table_and_survives_json():
  rows = [
      tables.Row('Faster (s)', '1.00', '10.00', 10.0, '10.0x faster', '>= 5x faster', True, 1.0,
                 10.0),
      tables.Row('Memory (GiB)', '2.00', '3.00', 1.5, '1.5x less', '>= 2x less', False),
      tables.Row('Skipped row', 'skipped: needs --mnist_idx=DIR', ''),
  ]
  record = tables.suite_record('python -m benchmarks.run --suite=x', 'x', 'full', 'X suite',
                               ['2026-11-30, full run', 'Machine: m'], rows, ['A note.'])
  text = tables.markdown(json.loads(json.dumps(record)))
  assert text.splitlines()[:4] == ['## X suite', '', '- 2026-11-30, full run', '- Machine: m']
  assert '| Faster (s) | 1.00 | 10.00 | 10.0x faster | >= 5x faster | yes |' in text
  assert '| Memory (GiB) | 2.00 | 3.00 | 1.5x less | >= 2x less | **no** |' in text
  assert '| Skipped row | skipped: needs --mnist_idx=DIR |  |  |  |  |' in text
  assert text.endswith('- A note.\n')
  assert record['rows'][0]['met'] is True and record['rows'][0]['reference_value'] == 10.0


def test_a_measurement_that_no_longer_fits_the_budget_is_skipped_not_started(tmp_path):
  children = measure.Children(str(tmp_path), 1, deadline=time.monotonic() + 30, keep_going=True)
  result = children.run('XLA on', 'training_rate', {}, expected_s=120)
  assert result['missing'].startswith('skipped: ') and not list(tmp_path.iterdir())


# ---- The GPU check (benchmarks/gpu_check.sh)


@pytest.mark.skipif(bool(tf.config.list_physical_devices('GPU')),
                    reason='needs a machine without '
                    'a GPU, where /GPU:0 cannot be placed')
def test_the_placement_check_fails_where_an_op_cannot_run_on_the_device_asked_for():
  double = tf.function(lambda x: tf.cast(x, tf.float32) * 2)
  images = tf.zeros((2, 4), tf.uint8)
  # conftest.py's second logical CPU, then a device the ops cannot have here.
  assert cases._run_placed(double, images, '/CPU:1')['output_device'].endswith('CPU:1')
  assert 'error' in cases._run_placed(double, images, '/GPU:0')
  assert tf.config.get_soft_device_placement()  # back as it was


def gpu_check(*args, env=None, timeout=60):
  return helpers.run_script('benchmarks/gpu_check.sh', *args, env=env, timeout=timeout)


def test_the_gpu_check_says_in_one_line_what_it_lacks(tmp_path):
  # Stand-ins for a Python that lacks modules: each prints what the script's check would.
  pythons = {}
  for name, lacks in [('no_tensorflow', 'tensorflow tf_keras'), ('no_tfds', 'tensorflow_datasets')]:
    pythons[name] = tmp_path / name
    pythons[name].write_text(f'#!/bin/sh\necho {lacks}\n')
    pythons[name].chmod(0o755)
  for result, expected in [
      (gpu_check(env={'PYTHON': str(pythons['no_tensorflow'])}), 'TensorFlow is not installed'),
      (gpu_check(env={'PYTHON': str(pythons['no_tfds'])}), 'lacks tensorflow_datasets'),
      (gpu_check('--quick', f'--mnist_idx={tmp_path}/none'), 'real MNIST\'s four IDX files'),
  ] + ([] if tf.config.list_physical_devices('GPU') else [(gpu_check(), 'TensorFlow sees no GPU')]):
    assert result.returncode == 1
    assert result.stderr.startswith('gpu_check: error: ') and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not shutil.which('shellcheck'), reason='shellcheck is not installed')
def test_the_benchmark_scripts_pass_shellcheck():
  scripts = [
      os.path.join(helpers.REPO, 'benchmarks', name) for name in ('gpu_check.sh', 'accuracy.sh')
  ]
  result = subprocess.run(['shellcheck', *scripts], capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout


@pytest.mark.slow
def test_the_gpu_check_runs_on_a_cpu_and_records_its_tables(tmp_path):
  """--quick on the CPU: the placement check, two logical CPUs under MirroredStrategy and the
  recipe's run on digits, each in its child; the precision, XLA and steps-per-call rows run
  the same case with other parameters and are left out here for time."""
  idx_dir = helpers.write_idx_dir(tmp_path / 'idx',
                                  *helpers.small_digits(400, seed=0),
                                  *helpers.small_digits(100, seed=1),
                                  compress=True)
  out = tmp_path / 'out'
  result = gpu_check('--quick',
                     f'--mnist_idx={idx_dir}',
                     f'--out={out}',
                     '--gpu_rows=replicas',
                     '--gpu_rows=mnist',
                     '--gpu_precision=float32',
                     timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  check = json.loads((out / 'records' / 'gpu_check' / 'quick.json').read_text())
  mnist = json.loads((out / 'records' / 'gpu_check' / 'quick_mnist.json').read_text())
  # The printed tables are the records' tables.
  assert (
      out /
      'gpu_check.md').read_text() == tables.markdown(check) + '\n' + tables.markdown(mnist) + '\n'
  rows = {row['measure'].split(':')[0]: row for row in check['rows']}
  assert rows['Resize and adapter on CPU']['met'] is True
  split = next(row for row in check['rows'] if row['measure'].startswith('2 logical CPUs'))
  assert split['met'] is True and split['ratio'] > 0
  assert 'not run' in rows['mixed_float16 vs float32 (img/s per CPU)']['project']
  test_accuracy = mnist['rows'][0]
  assert 0 <= test_accuracy['project_value'] <= 1
  assert check['kind'] == 'quick' and check['command'].startswith('python -m benchmarks.run')
  # Every measurement's time is printed and kept.
  assert len(check['elapsed_s']) == 4 and all(s > 0 for s in check['elapsed_s'].values())
  assert len(re.findall(r'^\[\d/\d\] .*: \d+ s$', result.stderr, re.MULTILINE)) == 4
  assert (out / 'child_logs.txt').read_text().count('==== ') == 4


def test_own_images_writes_digits_as_class_folders_of_mixed_files(tmp_path):
  images, labels = helpers.small_digits(40, seed=0)
  arrays = {
      'train': (images[:30, ..., None], labels[:30]),
      'test': (images[30:, ..., None], labels[30:])
  }
  names = own_images.class_names('mnist')
  assert own_images.write_class_folders(arrays, str(tmp_path / 'digits'), names) == 40
  paths = sorted(str(p) for p in (tmp_path / 'digits').rglob('*.*'))
  assert len(paths) == 40
  sides, modes, formats = set(), set(), set()
  for path in paths:
    with Image.open(path) as image:
      assert image.width == image.height and own_images.SIDES[0] <= image.width <= own_images.SIDES[
          1]
      sides.add(image.width)
      modes.add(image.mode)
      formats.add(image.format)
  assert len(sides) > 10 and modes == {'L', 'RGB'} and formats == {'PNG', 'JPEG'}
  class_names, splits = folder.list_splits(str(tmp_path / 'digits'), 0.2, 0.1)
  assert set(class_names) == {str(label) for label in labels[:30]}
  assert len(splits['test'].paths) == 10
