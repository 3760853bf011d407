"""trainer.main end to end on mock MNIST, and its bad inputs as a user meets them."""
import csv
import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from helpers import REPO as ROOT
from helpers import TINY_FLAGS, event_tags, event_values, hparams_session, train_with_flags
from trainer import callbacks, main, runs
from trainer.config import REFERENCE_BATCH_SIZE, TrainConfig
from trainer.errors import UserError


def test_flags_cfg_names_the_run_folder_it_resolved_to(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  flags.FLAGS(['trainer.main', '--adapter=conv'])  # no --run_dir: runs/<start time>
  config = main.config_from_flags()
  text = main.resolved_flags_text(config)
  assert '--adapter=conv' in text.splitlines()
  assert [line for line in text.splitlines() if line.startswith('--run_dir')
         ] == [f'--run_dir={config.run_dir}']
  (tmp_path / 'flags.cfg').write_text(text)
  flags.FLAGS.unparse_flags()
  flags.FLAGS(['trainer.main', f'--flagfile={tmp_path / "flags.cfg"}'])
  assert main.config_from_flags() == config


def test_a_finished_run_leaves_logs_checkpoint_and_metrics(tiny_run):
  with open(os.path.join(tiny_run, 'metrics.json')) as f:
    metrics = json.load(f)
  assert 0 <= metrics['test_accuracy'] <= 1 and metrics['test_loss'] > 0
  assert os.path.exists(os.path.join(tiny_run, 'checkpoints', 'best.index'))
  assert '--adapter=rgb' in open(os.path.join(tiny_run, 'flags.cfg')).read()
  with open(os.path.join(tiny_run, 'history.csv')) as f:
    assert len(f.read().splitlines()) == 1 + 2  # a header and two epochs
  train_tags = event_tags(os.path.join(tiny_run, 'logs', 'train'))
  assert {'epoch_loss', 'epoch_accuracy', 'epoch_learning_rate',
          'preprocessed_inputs'} <= train_tags
  assert {'epoch_loss', 'epoch_accuracy'} <= event_tags(os.path.join(tiny_run, 'logs',
                                                                     'validation'))


def test_history_and_tensorboard_give_the_same_learning_rate(tiny_run):
  with open(os.path.join(tiny_run, 'history.csv')) as f:
    history = [float(row['learning_rate']) for row in csv.DictReader(f)]
  logged = [
      value for _, value, _ in event_values(os.path.join(tiny_run, 'logs', 'train'),
                                            'epoch_learning_rate')
  ]
  assert len(history) == 2
  np.testing.assert_allclose(logged, history, rtol=1e-6)


def test_hparams_are_written_as_the_run_starts_keyed_by_the_whole_run_folder(tiny_run):
  started, trial, hparams = hparams_session(os.path.join(tiny_run, 'logs'))
  first_epoch = event_values(os.path.join(tiny_run, 'logs', 'train'), 'epoch_loss')[0][2]
  assert started < first_epoch  # a run still training, or stopped, shows in the HParams view
  assert trial == os.path.abspath(tiny_run)  # two folders named alike are two rows
  config = runs.load_config(tiny_run)
  assert math.isclose(hparams['peak_learning_rate'],
                      config.learning_rate * config.batch_size / REFERENCE_BATCH_SIZE)
  assert event_values(os.path.join(tiny_run, 'logs'), 'test_accuracy')  # added at the end


def test_two_runs_named_alike_in_different_folders_are_two_hparams_trials(tmp_path):
  trials = []
  for parent in ('a', 'b'):
    config = TrainConfig(run_dir=str(tmp_path / parent / 'run2'))
    log_dir = str(tmp_path / parent / 'logs')
    callbacks.log_hparams(log_dir, config, 'float32', 1)
    trials.append(hparams_session(log_dir)[1])
  assert trials[0] != trials[1] and all(trial.endswith('run2') for trial in trials)


def test_conv_adapter_trains_end_to_end(mock_mnist, tmp_path, notop_weights_file, capsys):
  run_dir = str(tmp_path / 'conv')
  metrics = train_with_flags(*TINY_FLAGS, '--adapter=conv', '--augment',
                             '--unaugmented_fraction=0.5', '--head=flatten',
                             f'--weights={notop_weights_file}', f'--run_dir={run_dir}',
                             f'--data_dir={tmp_path / "tfds"}')
  out = capsys.readouterr().out
  assert f'Test accuracy: {metrics["test_accuracy"]:.4f}' in out
  assert 'Test loss : ' in out
  assert os.path.exists(os.path.join(run_dir, 'metrics.json'))


def test_a_finished_run_is_never_overwritten(tiny_run):
  config = runs.load_config(tiny_run)
  with pytest.raises(UserError, match='finished run'):
    runs.check_resumable(config)


def test_an_unfinished_run_resumes_only_with_the_same_settings(tmp_path):
  config = TrainConfig(run_dir=str(tmp_path / 'run'))
  runs.record_config(config.run_dir, config, flags_text='--adapter=rgb\n')
  runs.check_resumable(config)  # the same settings resume
  other = TrainConfig(run_dir=config.run_dir, epochs=config.epochs + 1)
  with pytest.raises(UserError, match=r'other settings \(epochs\)'):
    runs.check_resumable(other)
  # A model setting is named by its flag, not by the group it is kept in.
  other = dataclasses.replace(config, model=dataclasses.replace(config.model, image_size=32))
  with pytest.raises(UserError, match=r'other settings \(image_size\)'):
    runs.check_resumable(other)


def run_main(*argv):
  return subprocess.run([sys.executable, '-m', 'trainer.main', *argv],
                        capture_output=True,
                        text=True,
                        timeout=300,
                        check=False)


@pytest.mark.parametrize('argv, expected', [
    (['--adapter=gray'], 'flag --adapter=gray: value should be one of <rgb|conv>'),
    (['--image_size=28'], 'flag --image_size=28: 28 is not an integer in the range [32, 1024]'),
    (['--batch_size=0'], 'flag --batch_size=0: 0 is not a positive integer'),
    (['--dataset=no_such_dataset'], "--dataset='no_such_dataset' is not a tensorflow-datasets"),
    (['--nodownload'], 'not prepared in --data_dir='),
])
def test_bad_input_ends_in_one_clear_line(argv, expected, tmp_path):
  # --weights=none: each case isolates one bad input (missing ImageNet weights fail first).
  result = run_main(*argv, '--weights=none', f'--data_dir={tmp_path}',
                    f'--run_dir={tmp_path / "run"}')
  assert result.returncode != 0
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith('error: ') and expected in last_line, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr


@pytest.mark.parametrize(
    'config_file',
    sorted(
        os.path.join('configs', name)
        for name in os.listdir(os.path.join(os.path.dirname(__file__), '..', 'configs'))))
def test_every_config_parses_into_a_train_config(config_file, monkeypatch):
  monkeypatch.chdir(ROOT)  # configs include each other by paths relative to the root
  flags.FLAGS(['trainer.main', f'--flagfile={config_file}'])
  config = main.config_from_flags()
  assert config.epochs >= 1 and config.model.image_size >= 32


def test_the_two_mnist_configs_share_the_recipe_and_differ_in_the_adapter(monkeypatch):
  monkeypatch.chdir(ROOT)
  configs = {}
  for adapter in ('rgb', 'conv'):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['trainer.main', f'--flagfile=configs/mnist_{adapter}.cfg'])
    configs[adapter] = dataclasses.asdict(main.config_from_flags())
  assert configs['rgb']['model'].pop('adapter') == 'rgb'
  assert configs['conv']['model'].pop('adapter') == 'conv'
  for config in configs.values():
    del config['run_name'], config['run_dir']
  assert configs['rgb'] == configs['conv'] and configs['rgb']['model']['augment']


def test_every_epoch_validates_on_a_dataset_read_from_files(prepared_mnist, tmp_path):
  """Validation once ran in epoch 1 only (a truncated cache); every row must have it."""
  run_dir = tmp_path / 'run'
  train_with_flags('--dataset=mnist', f'--data_dir={prepared_mnist}', '--nodownload',
                   '--weights=none', '--image_size=32', '--batch_size=16', '--epochs=3',
                   '--recalibrate_batchnorm=0', '--steps_per_epoch=2', '--warmup_epochs=0',
                   '--noexport', f'--run_dir={run_dir}')
  with open(run_dir / 'history.csv') as f:
    rows = list(csv.DictReader(f))
  assert [row['epoch'] for row in rows] == ['0', '1', '2']
  assert all(row['val_accuracy'] for row in rows), rows
