"""The measurements, each run in a child process: python -m benchmarks.cases NAME 'JSON PARAMS'.

The project's side always goes through the project's own code: trainer.data.load_splits
and training_batches, trainer.model.build_model, trainer.train.compile_for_stage, trainer.main.
Every child imports the same libraries (this module's imports) before any timer starts,
so the data-stage rows compare the work, not the imports.
"""
import dataclasses
import json
import math
import shutil
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
import tensorflow_datasets  # noqa: F401  (imported by trainer.data; listed so both sides share it)

from benchmarks import baseline
from benchmarks.first_batch import first_batch_fit_takes
from benchmarks.measure import MemoryByPhase, emit, images_per_second, peak_rss_bytes
from trainer import callbacks, data, distribution, export, runs, train
from trainer.keras_lib import keras
from trainer.model import ModelConfig, backbone_of, build_model, preprocessing_model

VALIDATION_SPLIT = 0.2


class StepTimer(keras.callbacks.Callback):
  """Marks the end of every training execution: (step index in its epoch, perf_counter), one
  list of marks per epoch; and the wall time of the first.

  Keras hands a callback that lacks `_supports_tf_logs` its logs as numbers, so each
  execution ends in a host sync, as with a progress bar: the marks are when the work
  was done, not when it was queued.
  """

  def __init__(self):
    super().__init__()
    self.epochs = []  # one list of marks per epoch, of every fit call
    self.first_step_wall = None

  def on_epoch_begin(self, epoch, logs=None):
    self.epochs.append([])

  def on_train_batch_end(self, batch, logs=None):
    self.epochs[-1].append((batch, time.perf_counter()))
    if self.first_step_wall is None:
      self.first_step_wall = time.time()


def libraries():
  return {
      'tensorflow': tf.__version__,
      'tf_keras': keras.__version__,
      'resize': baseline.resize_backend()
  }


# ---- Data stage: from the first data call to the first training batch ready.


def data_stage_project(p):
  start = time.perf_counter()
  splits = _splits(p['dataset'], p['fraction'])
  train_ds = data.training_batches(splits.train, p['batch_size'])
  steps = data.steps_per_epoch(splits.train, p['batch_size'])
  # What fit does with a dataset, up to the batch its first step trains on.
  images, _ = first_batch_fit_takes(train_ds, steps_per_epoch=steps)
  seconds = time.perf_counter() - start
  return {
      'seconds': seconds,
      'peak_rss': peak_rss_bytes(),
      'batch_bytes': _nbytes(images),
      **libraries()
  }


def data_stage_baseline(p):
  start = time.perf_counter()
  (x_train, y_train), (x_test, y_test) = baseline.load_arrays(p['dataset'], p['fraction'])
  x_train = baseline.prepare(x_train, p['image_size'])
  x_test = baseline.prepare(x_test, p['image_size'])
  prepared = time.perf_counter() - start
  images, _ = baseline.first_training_batch(x_train, y_train, p['batch_size'], VALIDATION_SPLIT)
  seconds = time.perf_counter() - start
  return {
      'seconds': seconds,
      'prepare_seconds': prepared,
      'peak_rss': peak_rss_bytes(),
      'host_bytes': x_train.nbytes + x_test.nbytes,
      'batch_bytes': _nbytes(images),
      'num_images': len(x_train) + len(x_test),
      **libraries()
  }


# ---- The input pipeline alone: batches per second, no model.


def input_pipeline(p):
  splits = _splits(p['dataset'], p['fraction'])
  iterator = iter(data.training_batches(splits.train, p['batch_size']))
  next(iterator)  # reads the split into memory: the data stage, measured above
  start = time.perf_counter()
  for _ in range(p['num_batches']):
    next(iterator)
  return {'batches_per_second': p['num_batches'] / (time.perf_counter() - start)}


# ---- Training: trainer.main, then the same model on tensors already in memory.


def train_main(p):
  """trainer.main for a few dozen steps, then its model fed in-memory tensors.

  Gives four figures from one model: trainer.main's throughput and its time from process
  start to the first finished step; the model's throughput on one in-memory batch of raw
  uint8 images (the harness's upper bound), and on the same batch already resized,
  normalised and made RGB (the backbone fed directly). The last two alternate in short
  fit calls, so load from elsewhere on the machine hits both alike.
  With `start_up_only`, only trainer.main's run, for its time to the first finished step.
  """
  batch_size, warmup, timed = p['batch_size'], p['warmup_steps'], p['timed_steps']
  timer = StepTimer()
  _add_training_callback(timer)
  run_dir = tempfile.mkdtemp(prefix='benchmark_run_')
  # The full run takes trainer.main's own path; the quick run hands it a part of the data.
  _run_main([
      f'--dataset={p["dataset"]}', f'--image_size={p["image_size"]}', f'--batch_size={batch_size}',
      '--epochs=1', f'--steps_per_epoch={warmup + timed}', '--eval_steps=1', '--weights=none',
      '--noexport', '--num_gpus=0', '--precision=float32', f'--run_dir={run_dir}'
  ],
            splits_override=_splits(p['dataset'], p['fraction']) if p['fraction'] < 1 else None)
  if p.get('start_up_only'):
    shutil.rmtree(run_dir, ignore_errors=True)
    return {'first_step_wall': timer.first_step_wall}
  model = timer.model
  main_rate = images_per_second(timer.epochs[:1], batch_size, warmup)

  # One batch of the same data, as raw uint8 and as the backbone receives it.
  images, labels = next(iter(_splits(p['dataset'], 1.0).train.batch(batch_size)))
  resized = preprocessing_model(model)(images, training=False)
  preprocess_seconds = _seconds_per_call(preprocessing_model(model), images)
  direct = backbone_fed_directly(model, resized.shape[1:])
  config = train.TrainConfig(run_dir=run_dir, batch_size=batch_size)
  stage = train.Stage('finetune', 0, 1, True, config.learning_rate)
  train.compile_for_stage(direct, stage, config, p['chunk_steps'], int(model.output.shape[-1]))
  sides = {'in_model': (model, images), 'pre_resized': (direct, resized)}
  timers = {name: StepTimer() for name in sides}
  for round_ in range(p['rounds']):
    for name in (sides if round_ % 2 == 0 else reversed(sides)):  # ABBA: neither always first
      side_model, x = sides[name]
      side_model.fit(tf.data.Dataset.from_tensors((x, labels)).repeat(),
                     steps_per_epoch=p['chunk_steps'],
                     epochs=1,
                     verbose=0,
                     callbacks=[timers[name]])
  # Only now: the optimizer's slots still restore, lazily, from the run's best checkpoint.
  shutil.rmtree(run_dir, ignore_errors=True)
  logged = [('trainer.main', timer.epochs[:1])] + [(n, t.epochs) for n, t in timers.items()]
  for name, epochs in logged:
    ends = [[(step, round(t - marks[0][1], 3)) for step, t in marks] for marks in epochs]
    print(f'{name}: step ends (step, s) in each epoch: {ends}')  # for the log
  return {
      'main_images_per_second':
          main_rate,
      'first_step_wall':
          timer.first_step_wall,
      'in_memory_images_per_second':
          images_per_second(timers['in_model'].epochs, batch_size, 1),
      'pre_resized_images_per_second':
          images_per_second(timers['pre_resized'].epochs, batch_size, 1),
      'preprocess_ms_per_batch':
          preprocess_seconds * 1000,
      'raw_bytes_per_image':
          _nbytes(images[0]),
      'float_bytes_per_image':
          _nbytes(resized[0]),
      **libraries()
  }


def backbone_fed_directly(model, input_shape):
  """`model` from the backbone on: the same layers and weights, fed preprocessed images."""
  inputs = keras.Input(shape=input_shape, name='preprocessed')
  layers = model.layers
  x = inputs
  for layer in layers[layers.index(backbone_of(model)):]:
    x = layer(x)
  return keras.Model(inputs, x, name='backbone_fed_directly')


# ---- Whole jobs: peak memory, and the time to a validation accuracy.


def whole_job_project(p):
  """trainer.main from its flags to its export: `steps` training steps, then validation, the
  test and the export on every image; the peak resident memory of each phase. `flags`, if
  given, are added to trainer.main's (e.g. to switch one setting off and compare)."""
  memory = MemoryByPhase()
  # The export restores the best checkpoint too, and stays 'export': phases only advance.
  for module, name, phase in [(data, 'load_splits', 'data'), (train, 'build_model', 'model'),
                              (train, 'train_stage', 'training and validation'),
                              (runs, 'restore', 'test'), (export, 'export_run', 'export')]:
    _enter_phase_on_call(memory, module, name, phase)
  run_dir = tempfile.mkdtemp(prefix='benchmark_run_')
  _run_main([
      f'--dataset={p["dataset"]}', f'--image_size={p["image_size"]}',
      f'--batch_size={p["batch_size"]}', '--epochs=1', f'--steps_per_epoch={p["steps"]}',
      '--weights=none', '--num_gpus=0', f'--precision={p["precision"]}', f'--run_dir={run_dir}',
      *p.get('flags', [])
  ],
            splits_override=_splits(p['dataset'], p['fraction'], every_split=True)
            if p['fraction'] < 1 else None)
  shutil.rmtree(run_dir, ignore_errors=True)
  return {
      'peak_rss': peak_rss_bytes(),
      'phases': memory.peaks(),
      'precision': keras.mixed_precision.global_policy().name,
      **libraries()
  }


def whole_job_article(p):
  """The article's job: its preparation, its model, `steps` augmented training steps with
  validation, the test; the peak resident memory of each phase."""
  memory = MemoryByPhase()
  memory.enter('data')
  (x_train, y_train), (x_test, y_test) = baseline.load_arrays(p['dataset'], p['fraction'])
  x_train = baseline.prepare(x_train, p['image_size'])
  x_test = baseline.prepare(x_test, p['image_size'])
  (x_train, y_train), validation = baseline.hold_out(x_train, y_train, VALIDATION_SPLIT)
  memory.enter('model')
  model = baseline.article_model(p['image_size'])
  memory.enter('training and validation')
  model.fit(baseline.augmented_batches(x_train, y_train, p['batch_size']),
            steps_per_epoch=p['steps'],
            epochs=1,
            validation_data=validation,
            batch_size=p['batch_size'],
            verbose=0)
  memory.enter('test')
  model.evaluate(x_test, y_test, batch_size=p['batch_size'], verbose=0)
  return {'peak_rss': peak_rss_bytes(), 'phases': memory.peaks(), **libraries()}


class LevelReached(keras.callbacks.Callback):
  """Stops training at the end of the first epoch whose validation accuracy reaches `level`;
  keeps the wall time of that moment and every epoch's validation accuracy."""

  def __init__(self, level):
    super().__init__()
    self.level = level
    self.reached_wall = None
    self.val_accuracy = []

  def on_epoch_end(self, epoch, logs=None):
    self.val_accuracy.append(float(logs['val_accuracy']))
    if self.reached_wall is None and self.val_accuracy[-1] >= self.level:
      self.reached_wall = time.time()
      self.model.stop_training = True

  def result(self):
    return {'reached_wall': self.reached_wall, 'val_accuracy': self.val_accuracy}


def time_to_accuracy_project(p):
  """`python -m trainer.main --flagfile=RECIPE` on the digits, until validation reaches the level."""
  reached = LevelReached(p['level'])
  _add_training_callback(reached)
  run_dir = tempfile.mkdtemp(prefix='benchmark_run_')
  _run_main([
      f'--flagfile={p["recipe"]}', f'--dataset={p["dataset"]}', f'--image_size={p["image_size"]}',
      '--weights=none', '--noexport', f'--run_dir={run_dir}', *p['flags']
  ],
            splits_override=_splits(p['dataset'], p['fraction']) if p['fraction'] < 1 else None)
  shutil.rmtree(run_dir, ignore_errors=True)
  return {**reached.result(), **libraries()}


def time_to_accuracy_article(p):
  """The article's recipe on the same digits, until validation reaches the level."""
  (x_train, y_train), _ = baseline.load_arrays(p['dataset'], p['fraction'])
  (x_train, y_train), validation = baseline.hold_out(baseline.prepare(x_train, p['image_size']),
                                                     y_train, VALIDATION_SPLIT)
  model = baseline.article_model(p['image_size'])
  reached = LevelReached(p['level'])
  model.fit(baseline.augmented_batches(x_train, y_train),
            epochs=p['max_epochs'],
            validation_data=validation,
            callbacks=[reached],
            verbose=2)
  return {**reached.result(), **libraries()}


def _run_main(argv, splits_override=None):
  """trainer.main in this process, as `python -m trainer.main ARGV` runs it."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  from trainer import main  # pylint: disable=import-outside-toplevel  (defines the flags)
  flags.FLAGS(['trainer.main', *argv])
  return main.run(splits_override=splits_override)


def _add_training_callback(callback):
  """Every fit of trainer.main gets `callback` after the project's own."""
  project_callbacks = callbacks.training_callbacks
  callbacks.training_callbacks = lambda *a, **k: project_callbacks(*a, **k) + [callback]


def _enter_phase_on_call(memory, module, name, phase):
  original = getattr(module, name)

  def wrapped(*args, **kwargs):
    memory.enter(phase)
    return original(*args, **kwargs)

  setattr(module, name, wrapped)


# ---- Training rates (the GPU suite, the CPU settings): one configuration per child.


def training_rate(p):
  """Images per second per replica for one precision ('auto' as trainer.main resolves it),
  device count, XLA, steps per call and, optionally, TensorFlow's thread pools (0: its default).

  `logical_devices` N: N replicas on logical devices carved from one physical device (see
  `logical_device_strategy`). `check_placement`: afterwards, where the model's ops run
  (see `placement`), with the same model and weights.
  """
  tf.config.threading.set_intra_op_parallelism_threads(p.get('intra_op_threads', 0))
  tf.config.threading.set_inter_op_parallelism_threads(p.get('inter_op_threads', 0))
  num_gpus = p['num_gpus']
  if p.get('logical_devices'):
    strategy = logical_device_strategy(p['logical_devices'], p['logical_memory_mb'])
  else:
    strategy = distribution.make_strategy(num_gpus)
  replicas = strategy.num_replicas_in_sync
  policy = distribution.resolve_precision(p['precision'], num_gpus)
  distribution.set_precision(policy)
  spe = p['steps_per_execution']
  warmup = math.ceil(p['warmup_steps'] / spe) * spe
  timed = math.ceil(p['timed_steps'] / spe) * spe
  global_batch = p['batch_size_per_device'] * replicas
  splits = _splits(p['dataset'], p['fraction'])
  train_ds = data.training_batches(splits.train, global_batch)
  # XLA and steps per call as trainer.main's --jit_compile and --steps_per_execution set them.
  config = train.TrainConfig(run_dir='unused',
                             batch_size=global_batch,
                             jit_compile=p['xla'],
                             steps_per_execution=spe)
  with strategy.scope():
    model = build_model(ModelConfig(image_size=p['image_size'], interpolation=p['interpolation']),
                        splits.info.image_shape, splits.info.num_classes)
    train.compile_for_stage(model, train.Stage('finetune', 0, 1, True, config.learning_rate),
                            config, warmup + timed, splits.info.num_classes)
  timer = StepTimer()
  model.fit(train_ds, steps_per_epoch=warmup + timed, epochs=1, verbose=0, callbacks=[timer])
  rate = images_per_second(timer.epochs, global_batch, warmup)
  result = {
      'images_per_second_per_device':
          rate / replicas,
      'replicas':
          replicas,
      # What the model ran with, read back: the settings under test took effect.
      'jit_compile':
          bool(model.jit_compile),
      'steps_per_call':
          _steps_per_call(timer.epochs[0]),
      'replica_devices':
          _replica_devices(strategy),
      'devices': [_device_name(d) for d in tf.config.list_physical_devices('GPU')[:num_gpus]]
                 or ['CPU'],
      'num_logical_gpus':
          len(tf.config.list_logical_devices('GPU')),
      'precision':
          policy,
      **libraries()
  }
  if p.get('check_placement'):
    result['placement'] = placement(model, splits.info.image_shape,
                                    '/GPU:0' if num_gpus else '/CPU:0')
  return result


def _steps_per_call(marks):
  """Steps between two executions' ends: the timer sees one end per call of the step."""
  return marks[1][0] - marks[0][0] if len(marks) > 1 else None


def _replica_devices(strategy):
  if isinstance(strategy, tf.distribute.MirroredStrategy):
    return list(strategy.extended.worker_devices)
  return [tf.config.list_logical_devices()[0].name]  # the default strategy's one device


def logical_device_strategy(count, memory_mb):
  """MirroredStrategy over `count` logical devices carved from the first GPU (`memory_mb`
  each) or, with no GPU, from the CPU: `--num_gpus=count`'s strategy on one device.

  trainer.distribution.make_strategy counts physical GPUs, so it refuses one GPU split in
  two; this makes the MirroredStrategy it makes for N GPUs, over the logical ones. Call it
  before anything initialises TensorFlow's devices. (MirroredStrategy reduces over one
  device instead of NCCL when GPUs are logical.)
  """
  gpus = tf.config.list_physical_devices('GPU')
  if gpus:
    tf.config.set_visible_devices(gpus[:1], 'GPU')
    tf.config.set_logical_device_configuration(
        gpus[0], [tf.config.LogicalDeviceConfiguration(memory_limit=memory_mb)] * count)
  else:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices('CPU')[0], [tf.config.LogicalDeviceConfiguration()] * count)
  logical = tf.config.list_logical_devices('GPU' if gpus else 'CPU')[:count]
  return tf.distribute.MirroredStrategy([device.name for device in logical])


# Ops that only move, name or hold values, left out of the list of what the check placed.
_PLUMBING_OPS = {'Placeholder', 'Identity', 'NoOp', 'Const', 'ReadVariableOp', '_Arg', '_Retval'}


def placement(model, image_shape, device):
  """Whether the model's preprocessing (scale, resize, adapter) runs on `device`, with the ops
  it is made of, and whether the whole forward pass does too.

  Soft placement off: an op with no kernel for `device` then fails instead of moving to the
  CPU unnoticed, so a pass under tf.device(device) that runs placed every op there. The
  two passes are tried apart, so that something outside the preprocessing (the strategy's
  variables, say) cannot hide its answer.
  """
  images = tf.zeros((2, *image_shape), tf.uint8)
  preprocess = tf.function(lambda x: preprocessing_model(model)(x, training=False))
  forward = tf.function(lambda x: model(x, training=False))
  preprocessed = _run_placed(preprocess, images, device)
  if 'output_device' in preprocessed:
    ops = {op.type for op in preprocess.get_concrete_function(images).graph.get_operations()}
    preprocessed['ops'] = sorted(ops - _PLUMBING_OPS)
  return {
      'device': device,
      'preprocessing': preprocessed,
      'forward': _run_placed(forward, images, device)
  }


def _run_placed(function, images, device):
  """{'output_device': ...} if `function` ran with every op on `device`, else {'error': ...}."""
  soft = tf.config.get_soft_device_placement()
  tf.config.set_soft_device_placement(False)
  try:
    with tf.device(device):
      output = function(images)
  except tf.errors.OpError as e:
    return {'error': e.message.splitlines()[0][:300]}
  finally:
    tf.config.set_soft_device_placement(soft)
  if not output.device.endswith(device[1:]):  # '/GPU:0' -> '...device:GPU:0'
    return {'error': f'the output came back on {output.device}'}
  return {'output_device': output.device}


def devices(_):
  """The GPUs TensorFlow sees and what --precision=auto picks on one of them (or on this CPU),
  for the GPU suite's rows and the table's header."""
  gpus = tf.config.list_physical_devices('GPU')
  return {
      'gpus': [_device_name(d) for d in gpus],
      'auto_precision': distribution.resolve_precision('auto', min(len(gpus), 1)),
      **libraries()
  }


# ---- A run of the recipe on real digits (the GPU check).


def recipe_run(p):
  """trainer.main with the recipe's flags from a random start, to its end (no export): the
  validation accuracy by epoch, the test figures, training img/s and the wall times."""
  timer, epochs = StepTimer(), LevelReached(float('inf'))  # a level never reached: all epochs
  _add_training_callback(timer)
  _add_training_callback(epochs)
  run_dir = tempfile.mkdtemp(prefix='benchmark_run_')
  metrics = _run_main([
      f'--flagfile={p["recipe"]}', f'--dataset={p["dataset"]}', '--weights=none',
      f'--image_size={p["image_size"]}', f'--batch_size={p["batch_size"]}',
      f'--epochs={p["epochs"]}', f'--num_gpus={p["num_gpus"]}', '--noexport',
      f'--run_dir={run_dir}', *p['flags']
  ])
  finished_wall = time.time()
  shutil.rmtree(run_dir, ignore_errors=True)
  return {
      'val_accuracy': epochs.val_accuracy,
      'test_accuracy': metrics['test_accuracy'],
      'test_loss': metrics['test_loss'],
      'images_per_second': images_per_second(timer.epochs, p['batch_size'], p['warmup_steps']),
      'first_step_wall': timer.first_step_wall,
      'finished_wall': finished_wall,
      'precision': keras.mixed_precision.global_policy().name,
      **libraries()
  }


def _device_name(device):
  return tf.config.experimental.get_device_details(device).get('device_name', device.name)


# ---- Helpers


def _splits(dataset, fraction, every_split=False):
  """The project's splits; a fraction < 1 keeps the first part of train (quick runs), and of
  validation and test too with `every_split`."""
  splits = data.load_splits(dataset, None, VALIDATION_SPLIT, download=False)
  if fraction >= 1:
    return splits
  part = lambda ds: ds.take(round(data.num_examples(ds) * fraction))
  return dataclasses.replace(
      splits,
      train=part(splits.train),
      validation=part(splits.validation) if every_split else splits.validation,
      test=part(splits.test) if every_split else splits.test)


def _seconds_per_call(model, x, calls=20):
  """The median time of `model` on `x` in a tf.function, as in a training step."""
  step = tf.function(lambda x: model(x, training=True))
  step(x)
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    step(x)
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _nbytes(tensor):
  return int(np.prod(tensor.shape)) * tensor.dtype.size


CASES = {
    f.__name__: f for f in (data_stage_project, data_stage_baseline, input_pipeline, train_main,
                            whole_job_project, whole_job_article, time_to_accuracy_project,
                            time_to_accuracy_article, training_rate, devices, recipe_run)
}

if __name__ == '__main__':
  emit(CASES[sys.argv[1]](json.loads(sys.argv[2])))
