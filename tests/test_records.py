"""Records: what a finished run and a measurement leave for benchmarks/RESULTS.md."""
import json
import os

import tensorflow as tf

from benchmarks import accuracy, records


def test_a_finished_run_is_recorded_with_its_epochs_test_figures_and_wall_time(tiny_run):
  record = accuracy.run_record(tiny_run, 'python -m trainer.main ...', 'mock MNIST')
  with open(os.path.join(tiny_run, 'metrics.json')) as f:
    metrics = json.load(f)
  assert record['test_accuracy'] == metrics['test_accuracy']
  assert len(record['val_accuracy']) == record['epochs'] == 2
  assert all(0 <= value <= 1 for value in record['val_accuracy'])
  assert record['image_size'] == 32 and record['adapter'] == 'rgb'
  # The run took seconds to minutes; not zero, and not the hours an idle gap would add.
  assert 1 <= record['wall_s'] < 3600


def test_wall_time_leaves_out_the_gap_between_an_interruption_and_the_resume(tmp_path):
  for process, (first, last) in enumerate([(1000.0, 1100.0), (5000.0, 5030.0)]):
    path = tmp_path / 'logs' / 'train' / f'events.out.tfevents.{process}'
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
      for wall_time in (first, last):
        writer.write(tf.compat.v1.Event(wall_time=wall_time).SerializeToString())
  assert accuracy.wall_seconds(str(tmp_path)) == 130


def test_a_record_carries_its_provenance(tmp_path, monkeypatch):
  monkeypatch.setattr(records, 'RECORDS_DIR', str(tmp_path))
  path = records.write('claim', 'row', {'figure': 1.5})
  with open(path) as f:
    record = json.load(f)
  assert record['figure'] == 1.5 and record['claim'] == 'claim' and record['name'] == 'row'
  assert record['commit'] and record['recorded'].endswith('Z')
  assert 'cores' in record['machine']
  assert [r['figure'] for r in records.read_all(str(tmp_path))['claim']] == [1.5]
