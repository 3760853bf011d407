"""The benchmarks run end to end at quick sizes: the whole-jobs table's rows come out filled."""
import re

import pytest
from PIL import Image

import helpers
from benchmarks import own_images, recalibration
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
                              timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  table = table_file.read_text()

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
