"""Scale-out in one process: MirroredStrategy over conftest's two logical CPUs, mixed
precision, and the bad hardware inputs a user can give.

Multi-process runs (launch/local.sh) are in test_launch.py, preemption in test_resume.py.
"""
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from helpers import train_with_flags
from trainer import data, distribution, main, train
from trainer.config import ModelConfig, TrainConfig
from trainer.errors import UserError
from trainer.keras_lib import keras
from trainer.model import backbone_of, build_model

GLOBAL_BATCH = 8
NUM_CLASSES = 10
MODEL = ModelConfig(image_size=32)


def two_cpus():
  return tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])


def one_global_batch():
  """One batch of GLOBAL_BATCH uint8 28x28x1 images; MirroredStrategy splits it 4 + 4."""
  return data.synthetic_dataset(GLOBAL_BATCH, seed=0).batch(GLOBAL_BATCH)


def compile_transfer_stage(model):
  """The project's own compile, for a frozen backbone.

  Frozen, because BatchNormalization in training mode normalises each replica's
  half batch by its own statistics, so a fine-tuned step legitimately differs from
  one device's; frozen, it uses the ImageNet statistics on every replica.
  """
  config = TrainConfig(run_dir='unused', batch_size=GLOBAL_BATCH, warmup_epochs=0)
  stage = train.Stage('transfer', 0, 1, backbone_trainable=False, learning_rate=0.1)
  train.compile_for_stage(model, stage, config, steps_per_epoch=1, num_classes=NUM_CLASSES)


def one_step(strategy, initial_weights):
  """Trains one step under `strategy` from `initial_weights`; returns the loss and the model."""
  with strategy.scope():
    model = build_model(MODEL, data.SYNTHETIC_SHAPE, NUM_CLASSES)
    model.set_weights(initial_weights)
    compile_transfer_stage(model)
  history = model.fit(one_global_batch(), epochs=1, verbose=0)
  return history.history['loss'][0], model


def test_two_replicas_train_one_step_like_one_device():
  keras.utils.set_random_seed(0)
  start = build_model(MODEL, data.SYNTHETIC_SHAPE, NUM_CLASSES)
  initial = start.get_weights()

  one_loss, one = one_step(tf.distribute.get_strategy(), initial)
  two_loss, two = one_step(two_cpus(), initial)

  assert two.distribute_strategy.num_replicas_in_sync == 2
  np.testing.assert_allclose(two_loss, one_loss, rtol=1e-5)
  for expected, actual in zip(one.get_weights(), two.get_weights()):
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6)
  # Adam's first step moves every weight by about the learning rate whatever the
  # gradient's size, so equal weights alone would miss a gradient off by the replica
  # count. Adam's moments hold the gradient and its square: they must match too.
  for expected, actual in zip(one.optimizer.variables, two.optimizer.variables):
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-4, atol=1e-9)
  # And the step did something: the classifier moved.
  assert not np.allclose(
      one.get_layer('logits').get_weights()[0],
      start.get_layer('logits').get_weights()[0])


def test_mixed_bfloat16_trains_on_the_cpu_with_a_float32_output():
  distribution.set_precision(distribution.resolve_precision('mixed_bfloat16', num_gpus=0))
  model = build_model(MODEL, data.SYNTHETIC_SHAPE, NUM_CLASSES)
  compile_transfer_stage(model)
  history = model.fit(one_global_batch(), epochs=1, verbose=0)

  assert np.isfinite(history.history['loss'][0])
  assert backbone_of(model).compute_dtype == 'bfloat16'
  assert model.output.dtype == tf.float32  # the softmax stays float32
  assert model.predict(one_global_batch(), verbose=0).dtype == np.float32
  # bfloat16 has float32's range: no loss scaling.
  assert not isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)


def test_mixed_float16_scales_the_loss():
  distribution.set_precision('mixed_float16')
  model = build_model(MODEL, data.SYNTHETIC_SHAPE, NUM_CLASSES)
  compile_transfer_stage(model)
  assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)
  assert backbone_of(model).compute_dtype == 'float16'
  assert model.output.dtype == tf.float32


@pytest.mark.parametrize(
    'has_bfloat16, onednn, expected',
    [
        (True, None, 'mixed_bfloat16'),
        (True, '1', 'mixed_bfloat16'),
        (True, '0', 'float32'),  # multi-worker runs turn oneDNN off (trainer/cli.py)
        (False, None, 'float32'),
    ])
def test_auto_precision_on_the_cpu_follows_its_bfloat16_instructions(monkeypatch, has_bfloat16,
                                                                     onednn, expected):
  monkeypatch.setattr(distribution, 'cpu_has_bfloat16', lambda: has_bfloat16)
  if onednn is None:
    monkeypatch.delenv('TF_ENABLE_ONEDNN_OPTS', raising=False)
  else:
    monkeypatch.setenv('TF_ENABLE_ONEDNN_OPTS', onednn)
  assert distribution.resolve_precision('auto', num_gpus=0) == expected
  assert distribution.resolve_precision('float32', num_gpus=0) == 'float32'


# ---- Bad inputs: each ends in one UserError line (trainer/cli.py prints it, exit 1).


def test_more_gpus_than_visible_lists_what_is_visible(tmp_path):
  with pytest.raises(UserError,
                     match=r'--num_gpus=2 but 0 GPUs are visible \(none\); '
                     r'use --num_gpus=0 or fewer'):
    train_with_flags('--num_gpus=2', f'--run_dir={tmp_path}')


@pytest.mark.parametrize('tf_config, problem', [
    ('{"cluster": ', 'TF_CONFIG is malformed'),
    ('{"cluster": {"worker": ["localhost:1"]}}', 'TF_CONFIG is malformed'),
    ('{"cluster": {"worker": "localhost:1"}, "task": {"type": "worker", "index": 0}}',
     'cluster.worker is not a list of "host:port" addresses'),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 1}}',
     'TF_CONFIG task worker:1 is not in its cluster'),
])
def test_a_malformed_tf_config_is_refused_before_any_worker_starts(tf_config, problem, monkeypatch,
                                                                   tmp_path):
  monkeypatch.setenv('TF_CONFIG', tf_config)
  with pytest.raises(UserError, match=problem):
    train_with_flags(f'--run_dir={tmp_path}')


# The layouts launch/, Vertex AI and Kubeflow's TFJob write; all train under
# MultiWorkerMirroredStrategy. Vertex AI adds "job" and "environment".
@pytest.mark.parametrize(
    'cluster, task',
    [
        ({
            'worker': ['w0:2222', 'w1:2222']
        }, {
            'type': 'worker',
            'index': 1
        }),
        ({
            'chief': ['c:2222']
        }, {
            'type': 'chief',
            'index': 0
        }),  # a one-replica Vertex AI job
        ({
            'chief': ['c:2222'],
            'worker': ['w0:2222', 'w1:2222']
        }, {
            'type': 'chief',
            'index': 0
        }),
        ({
            'chief': ['c:2222'],
            'worker': ['w0:2222', 'w1:2222']
        }, {
            'type': 'worker',
            'index': 1
        }),
        ({
            'chief': ['c:2222'],
            'worker': ['w0:2222'],
            'evaluator': ['e:2222']
        }, {
            'type': 'worker',
            'index': 0
        }),
    ],
    ids=['workers', 'chief', 'chief+workers:chief', 'chief+workers:worker', 'with-evaluator'])
def test_every_multi_worker_layout_is_accepted(cluster, task):
  config = {
      'cluster': cluster,
      'task': task,
      'job': {
          'workerPoolSpecs': []
      },
      'environment': 'cloud'
  }
  assert distribution.parse_tf_config(json.dumps(config)) == config


@pytest.mark.parametrize('cluster, task, problem', [
    ({
        'workers': ['w0:2222']
    }, {
        'type': 'workers',
        'index': 0
    }, "TF_CONFIG's cluster has workers tasks, which MultiWorkerMirroredStrategy does not use"),
    ({
        'chief': ['c:2222'],
        'ps': ['p:2222']
    }, {
        'type': 'chief',
        'index': 0
    }, "TF_CONFIG's cluster has ps tasks"),
    ({
        'chief': ['c0:2222', 'c1:2222']
    }, {
        'type': 'chief',
        'index': 1
    }, "TF_CONFIG's cluster has 2 chiefs; keep one"),
    ({
        'chief': 'c:2222'
    }, {
        'type': 'chief',
        'index': 0
    }, "TF_CONFIG's cluster.chief is not a list"),
    ({
        'chief': ['c:2222']
    }, {
        'type': 'worker',
        'index': 0
    }, 'TF_CONFIG task worker:0 is not in its cluster'),
    ({
        'chief': ['c:2222']
    }, {
        'type': 'chief',
        'index': 1
    }, 'TF_CONFIG task chief:1 is not in its cluster'),
    ({
        'chief': ['c:2222']
    }, {
        'type': 'evaluator',
        'index': 0
    }, 'TF_CONFIG makes this task an evaluator'),
    ({
        'chief': ['c:2222'],
        'worker': ['w1']
    }, {
        'type': 'chief',
        'index': 0
    }, "TF_CONFIG's cluster.worker has 'w1', not a \"host:port\" address"),
    ({
        'worker': ['w0:2222', 'w1:http']
    }, {
        'type': 'worker',
        'index': 0
    }, "TF_CONFIG's cluster.worker has 'w1:http'"),
])
def test_a_tf_config_typo_is_refused_in_one_line(cluster, task, problem):
  with pytest.raises(UserError, match=re.escape(problem)) as refused:
    distribution.parse_tf_config(json.dumps({'cluster': cluster, 'task': task}))
  assert '\n' not in str(refused.value) and '; ' in str(refused.value)


def _free_ports(count):
  """`count` localhost ports free right now, held together so that they differ."""
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('localhost', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def test_a_chief_alone_is_a_one_replica_multi_worker_run_and_the_chief():
  """A one-replica Vertex AI job: a cluster of one chief. In a process of its own, since
  MultiWorkerMirroredStrategy starts a server that lives as long as the process."""
  port, = _free_ports(1)
  tf_config = json.dumps({
      'cluster': {
          'chief': [f'localhost:{port}']
      },
      'task': {
          'type': 'chief',
          'index': 0
      }
  })
  code = ('import tensorflow as tf; from trainer import distribution as d; s = d.make_strategy(0); '
          'print(isinstance(s, tf.distribute.MultiWorkerMirroredStrategy), '
          's.num_replicas_in_sync, d.is_chief(s))')
  result = subprocess.run([sys.executable, '-c', code],
                          capture_output=True,
                          text=True,
                          timeout=300,
                          check=False,
                          env={
                              **os.environ, 'TF_CONFIG': tf_config
                          })
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ['True', '1', 'True']


@pytest.mark.slow
def test_a_chief_and_a_worker_train_one_model_and_only_the_chief_writes(tmp_path):
  """The layout of a two-replica Vertex AI job or a TFJob with a Chief and a Worker: two
  processes here, on synthetic data at a tiny size."""
  run_dir, worker_tmp = tmp_path / 'run', tmp_path / 'tmp'
  worker_tmp.mkdir()
  chief_port, worker_port = _free_ports(2)
  cluster = {'chief': [f'localhost:{chief_port}'], 'worker': [f'localhost:{worker_port}']}
  flags_ = [
      '--dataset=synthetic', '--weights=none', '--image_size=32', '--batch_size=8', '--epochs=1',
      '--steps_per_epoch=2', '--eval_steps=1', '--recalibrate_batchnorm=2', f'--run_dir={run_dir}'
  ]
  processes = [
      subprocess.Popen(
          [sys.executable, '-m', 'trainer.main', *flags_],
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
          env={
              **os.environ, 'TMPDIR': str(worker_tmp),
              'TF_CONFIG': json.dumps({
                  'cluster': cluster,
                  'task': {
                      'type': task,
                      'index': 0
                  }
              })
          }) for task in ('chief', 'worker')
  ]
  try:
    outputs = [p.communicate(timeout=900)[0] for p in processes]
  finally:
    for p in processes:
      p.kill()
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
    assert '2 replica(s)' in out  # both in one strategy
  test_losses = [line for out in outputs for line in out.splitlines() if 'Test loss' in line]
  assert len(test_losses) == 2 and test_losses[0] == test_losses[1], test_losses

  assert (run_dir / 'metrics.json').exists()
  assert (run_dir / 'export' / 'saved_model.pb').exists()
  with open(run_dir / 'history.csv') as f:
    assert len(f.read().splitlines()) == 1 + 1  # the chief's one epoch, not one per process
  assert not list(worker_tmp.glob('worker_*'))  # the worker's throwaway folder is gone


def test_a_multi_worker_run_needs_a_named_run_folder(monkeypatch):
  # The default folder is named after the start time, which differs between workers.
  monkeypatch.setenv(
      'TF_CONFIG', '{"cluster": {"worker": ["localhost:1", "localhost:2"]}, '
      '"task": {"type": "worker", "index": 0}}')
  with pytest.raises(UserError, match='needs the same run folder on every worker'):
    train_with_flags()


def test_a_global_batch_that_does_not_split_over_the_replicas(tmp_path):
  flags.FLAGS(['trainer.main', '--batch_size=7', f'--run_dir={tmp_path}'])
  with pytest.raises(UserError,
                     match='--batch_size=7 does not split evenly over 2 replicas; '
                     'use a multiple of 2'):
    main.run(strategy_override=two_cpus())


@pytest.mark.parametrize('argv, env, expected', [
    (['--precision=float8'], {},
     'flag --precision=float8: value should be one of <auto|float32|mixed_float16|mixed_bfloat16>'),
    ([], {
        'TF_CONFIG': 'not json'
    }, 'TF_CONFIG is malformed'),
])
def test_bad_hardware_input_ends_in_one_line(argv, env, expected, tmp_path):
  """The same errors as a user meets them: one line on stderr, a non-zero exit."""
  result = subprocess.run([sys.executable, '-m', 'trainer.main', *argv, f'--run_dir={tmp_path}'],
                          capture_output=True,
                          text=True,
                          timeout=300,
                          check=False,
                          env={
                              **os.environ,
                              **env
                          })
  assert result.returncode == 1
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith('error: ') and expected in last_line, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr


def test_a_lost_worker_ends_in_one_line(monkeypatch):
  """What the surviving workers print when another one dies (seen with launch/local.sh)."""
  monkeypatch.setenv('TF_CONFIG', '{}')
  lost = tf.errors.UnavailableError(
      None, None, 'Collective ops is aborted by: The following tasks are unhealthy (stopped '
      'sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed.')
  with pytest.raises(UserError,
                     match=r'lost contact with /job:worker/replica:0/task:1 '
                     r'\(UnavailableError\); .* restart every worker'):
    with distribution.lost_workers_as_user_errors():
      raise lost


def test_bfloat16_support_is_read_from_the_cpu_flags(tmp_path):
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text('flags\t\t: fpu vme avx2 avx512f avx512_bf16 amx_tile\n')
  assert distribution.cpu_has_bfloat16(str(cpuinfo))
  cpuinfo.write_text('flags\t\t: fpu vme avx2 avx512f\n')
  assert not distribution.cpu_has_bfloat16(str(cpuinfo))
  assert not distribution.cpu_has_bfloat16(str(tmp_path / 'missing'))
