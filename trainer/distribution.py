"""Where training runs: the tf.distribute strategy, the mixed-precision policy, who writes outputs.

  TF_CONFIG set   -> MultiWorkerMirroredStrategy (collective all-reduce), --num_gpus per worker
  --num_gpus N    -> MirroredStrategy over the first N GPUs
  --num_gpus 0    -> the default strategy, on the CPU
"""
import contextlib
import json
import os
import re
import shutil
import tempfile
from typing import Iterator

import tensorflow as tf
from absl import logging

from trainer.errors import UserError
from trainer.keras_lib import keras

# float16 tensor cores arrived with Volta (compute capability 7.0).
MIN_FLOAT16_CAPABILITY = (7, 0)


def make_strategy(num_gpus: int, collective_timeout_s: float = 600) -> tf.distribute.Strategy:
  """Call before anything else creates TensorFlow devices or tensors."""
  gpus = tf.config.list_physical_devices('GPU')
  if num_gpus > len(gpus):
    visible = ', '.join(gpu.name for gpu in gpus) or 'none'
    raise UserError(f'--num_gpus={num_gpus} but {len(gpus)} GPUs are visible ({visible}); '
                    f'use --num_gpus={len(gpus)} or fewer')
  if gpus:
    tf.config.set_visible_devices(gpus[:num_gpus], 'GPU')
  if 'TF_CONFIG' in os.environ:
    parse_tf_config(os.environ['TF_CONFIG'])
    # A bounded collective timeout makes the surviving workers fail with an error
    # when one dies, instead of waiting for it forever.
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout_s)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
  if num_gpus:
    # Mirrored even for one GPU: one GPU trains through the same code path as several.
    return tf.distribute.MirroredStrategy([f'/gpu:{i}' for i in range(num_gpus)])
  return tf.distribute.get_strategy()


def parse_tf_config(text: str) -> dict:
  """Checks TF_CONFIG's shape so a typo fails here, not deep inside a collective.

  Accepts the layouts MultiWorkerMirroredStrategy trains with, as launch/, Vertex AI and
  Kubeflow's TFJob write them: workers only (worker 0 is the chief), a chief only (a
  one-replica Vertex AI job) or a chief and workers. Other keys (Vertex AI adds "job"
  and "environment") and an evaluator in the cluster are allowed; an evaluator task is
  not: this trainer evaluates on the training workers.
  """
  fix = ('set TF_CONFIG to {"cluster": {"chief": ["host:port"], "worker": ["host:port", ...]}, '
         '"task": {"type": "chief" or "worker", "index": I}} (chief, worker or both) or unset it')
  try:
    config = json.loads(text)
    cluster = dict(config['cluster'])
    task_type, index = config['task']['type'], int(config['task']['index'])
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f'TF_CONFIG is malformed ({type(e).__name__}: {e}); {fix}') from None
  unknown = sorted(set(cluster) - {'chief', 'worker', 'evaluator'})
  if unknown:
    raise UserError(f'TF_CONFIG\'s cluster has {", ".join(unknown)} tasks, which '
                    'MultiWorkerMirroredStrategy does not use; drop them (parameter servers '
                    f'are for another strategy) or fix the name; {fix}')
  for job, addresses in cluster.items():
    if not (isinstance(addresses, list) and addresses and
            all(isinstance(address, str) for address in addresses)):
      raise UserError(f'TF_CONFIG\'s cluster.{job} is not a list of "host:port" addresses; {fix}')
    bad = [address for address in addresses if not _is_host_and_port(address)]
    if bad:
      raise UserError(f'TF_CONFIG\'s cluster.{job} has {bad[0]!r}, not a "host:port" address '
                      '(a port from 1 to 65535 after the last colon); add the port each worker '
                      'listens on, e.g. "10.0.0.2:2222"')
  if len(cluster.get('chief', [])) > 1:
    raise UserError(f'TF_CONFIG\'s cluster has {len(cluster["chief"])} chiefs; keep one and '
                    'list the others under "worker"')
  if task_type == 'evaluator':
    raise UserError('TF_CONFIG makes this task an evaluator, but the trainer evaluates on the '
                    'training workers; remove the evaluator (TFJob\'s Evaluator replicas, '
                    'Vertex AI\'s worker pool 3)')
  if task_type not in ('chief', 'worker') or not 0 <= index < len(cluster.get(task_type, [])):
    raise UserError(f'TF_CONFIG task {task_type}:{index} is not in its cluster; {fix}')
  return config


def _is_host_and_port(address: str) -> bool:
  host, _, port = address.rpartition(':')
  return bool(host) and port.isdigit() and 1 <= int(port) <= 65535


def resolve_precision(precision: str, num_gpus: int) -> str:
  """'auto': mixed_float16 on GPUs with tensor cores, mixed_bfloat16 on CPUs with bfloat16
  instructions (while oneDNN's kernels are on), else float32. Logs the choice and why."""
  if precision != 'auto':
    return precision
  gpus = tf.config.list_physical_devices('GPU')[:num_gpus]
  if gpus:
    if all(_capability(gpu) >= MIN_FLOAT16_CAPABILITY for gpu in gpus):
      return _chosen('mixed_float16', 'every GPU in use has float16 tensor cores')
    return _chosen('float32', 'a GPU in use predates float16 tensor cores')
  if not cpu_has_bfloat16():
    return _chosen('float32', 'this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16)')
  if os.environ.get('TF_ENABLE_ONEDNN_OPTS') == '0':
    # Without oneDNN, TensorFlow's bfloat16 kernels are slower than float32 (benchmarks/RESULTS.md).
    return _chosen(
        'float32', 'oneDNN is off (TF_ENABLE_ONEDNN_OPTS=0, as in multi-worker runs), '
        'and bfloat16 is slow without it')
  # Measured on real MNIST: the same accuracy as float32, 1.2x faster (benchmarks/RESULTS.md).
  return _chosen('mixed_bfloat16', 'this CPU has bfloat16 instructions; --precision=float32 '
                 'turns it off')


def _chosen(policy: str, why: str) -> str:
  logging.info('--precision=auto: %s (%s)', policy, why)
  return policy


def cpu_has_bfloat16(cpuinfo: str = '/proc/cpuinfo') -> bool:
  """True where the CPU reports native bfloat16 arithmetic (AVX512_BF16 or AMX), on Linux."""
  try:
    with open(cpuinfo) as f:
      flags = set(f.read().split())
  except OSError:
    return False
  return bool(flags & {'avx512_bf16', 'amx_bf16'})


def _capability(gpu):
  return tf.config.experimental.get_device_details(gpu).get('compute_capability', (0, 0))


def set_precision(policy: str) -> None:
  """Sets the Keras policy for every layer built afterwards; the output softmax stays float32."""
  keras.mixed_precision.set_global_policy(policy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the one worker that writes logs, checkpoints and exports."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or resolver.task_type is None:
    return True
  if resolver.task_type == 'chief':
    return True
  has_chief = 'chief' in resolver.cluster_spec().as_dict()
  return resolver.task_type == 'worker' and resolver.task_id == 0 and not has_chief


def barrier(strategy: tf.distribute.Strategy) -> None:
  """Returns once every worker has called it: an all-reduce cannot finish before all take part.

  Workers read files that only the chief writes (the best checkpoint); without this a
  fast worker could read one the chief is still writing. With one worker it returns at once.
  """
  # A tf.function: run eagerly, MirroredStrategy warns of its overhead.
  ones = strategy.run(tf.function(lambda: tf.constant(1.0)))
  strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)


def check_shared_run_dir(run_dir_flags_given: bool) -> None:
  """A multi-worker run needs one run folder that every worker names the same way.

  The default folder is named after the start time, which differs between workers.
  """
  if 'TF_CONFIG' in os.environ and not run_dir_flags_given:
    raise UserError('a multi-worker run (TF_CONFIG is set) needs the same run folder on every '
                    'worker; pass --run_dir (a shared folder, e.g. gs://BUCKET/runs/NAME, when '
                    'the workers are on several machines) or --run_name')


@contextlib.contextmanager
def lost_workers_as_user_errors() -> Iterator[None]:
  """Under TF_CONFIG, a worker that died or hung ends the others with one line, not a traceback.

  TensorFlow notices a dead worker by its missing heartbeats (UnavailableError, within
  about a minute) and a hung one by --collective_timeout (DeadlineExceededError).
  """
  try:
    yield
  except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as e:
    if 'TF_CONFIG' not in os.environ:
      raise
    tasks = sorted(set(re.findall(r'/job:\w+/replica:\d+/task:\d+', e.message)))
    raise UserError(f'lost contact with {", ".join(tasks) or "another worker"} '
                    f'({type(e).__name__}); check that worker\'s log, then restart every worker '
                    'with the same command: the run resumes from its last finished epoch') from None


class OutputDir:
  """The run folder on the chief; a throwaway folder on other workers.

  Under MultiWorkerMirroredStrategy every worker must take part in saving (the
  variables are read collectively), but only the chief's files are kept.
  """

  def __init__(self, run_dir: str, chief: bool):
    self.chief = chief
    self.path = run_dir if chief else tempfile.mkdtemp(prefix='worker_')

  def __enter__(self) -> str:
    return self.path

  def __exit__(self, *exc: object) -> None:
    if not self.chief:
      shutil.rmtree(self.path, ignore_errors=True)
