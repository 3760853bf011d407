"""The benchmark suites: each prints a markdown table of the project against a reference.

  python -m benchmarks.run --suite=cpu [--quick] [--output=FILE]
  python -m benchmarks.run --suite=gpu [--num_gpus=N] [--quick] [--output=FILE]
  python -m benchmarks.run --suite=gpu_check --mnist_idx=DIR   # benchmarks/gpu_check.sh

Run from the repository root. Each row is the project's figure, the baseline's or the
reference's figure, and their ratio, measured in the same run on the same data, image
size and batch size; every figure comes from a child process (benchmarks/cases.py).
--quick shrinks every size for a smoke check of the code: its figures are not the ones
to quote. A full run also writes each table as a record (benchmarks/records/CLAIM/NAME.json,
see benchmarks/tables.py), which benchmarks.report renders; the printed table is made
from that record.
"""
import dataclasses
import os
import shlex
import sys
import tempfile
import time
from typing import Callable, List, Optional, Tuple

from absl import app, flags

from benchmarks import records, tables
from benchmarks.measure import ChildFailed, Children, gib, machine_description
from benchmarks.tables import Row

DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'  # Debian's dataset-fashion-mnist
# The GPU suites' rows besides float32 (always: the reference, and the placement check);
# mnist: the GPU check's run of the recipe.
GPU_ROW_GROUPS = ('precisions', 'replicas', 'xla', 'steps_per_execution', 'mnist')
GPU_CHECK_BUDGET_S = 450  # of benchmarks/gpu_check.sh's 8 minutes; the rest starts and reports

flags.DEFINE_enum(
    'suite', 'cpu', ['cpu', 'jobs', 'cpu_settings', 'gpu', 'gpu_check'],
    'cpu: the project against the '
    'article\'s approach on this machine, its parts and then whole jobs; jobs: only the whole '
    'jobs (peak memory, time to accuracy); cpu_settings: training img/s on this CPU by '
    'precision, thread pools, batch size and oneDNN; gpu: where the model runs and images/s '
    'per GPU by precision, GPUs, XLA, steps per call; gpu_check: the gpu suite within '
    '--budget_s, then 2 epochs of the recipe on real MNIST (--mnist_idx); '
    'benchmarks/gpu_check.sh runs it.')
flags.DEFINE_bool('quick', False, 'Small sizes: a smoke check of the code in a few minutes.')
flags.DEFINE_string(
    'dataset', None, 'The data, as trainer.main\'s --dataset: default '
    f'idx:{DEBIAN_FASHION_MNIST} where Debian\'s dataset-fashion-mnist is '
    'installed, else synthetic data of the same shape.')
flags.DEFINE_string(
    'mnist_idx', None, 'Folder of real MNIST\'s IDX files for the time-to-accuracy row '
    'and the GPU check\'s run (python ../shared/data/mnist_idx.py DIR writes them); without it '
    'the row is skipped.')
flags.DEFINE_float('level',
                   0.98,
                   'Time-to-accuracy row: the validation accuracy both sides train to.',
                   lower_bound=0,
                   upper_bound=1)
flags.DEFINE_integer('max_epochs',
                     10, 'Time-to-accuracy row: the article\'s recipe stops here if it has '
                     'not reached --level (the project\'s recipe has its own epochs).',
                     lower_bound=1)
flags.DEFINE_string('output', None, 'Also write the table to this file.')
flags.DEFINE_string('child_logs', None, 'Where the child processes\' logs go (default: a new '
                    'temporary folder).')
flags.DEFINE_integer('num_gpus',
                     0,
                     'GPU suite: the GPUs of the scaling row; 0: all visible.',
                     lower_bound=0)
flags.DEFINE_enum('gpu_precision', 'mixed_float16', ['float32', 'mixed_float16', 'mixed_bfloat16'],
                  'GPU suite: the precision of the scaling, XLA and steps-per-call rows.')
flags.DEFINE_integer('steps_per_execution',
                     10,
                     'GPU suite: steps per call in that row.',
                     lower_bound=2)
flags.DEFINE_multi_enum(
    'gpu_rows', list(GPU_ROW_GROUPS), GPU_ROW_GROUPS,
    'GPU suites: which rows to measure besides float32 and the placement check (default: '
    'all); the others say they were not run.')
flags.DEFINE_integer(
    'logical_gpu_memory_mb',
    24576,
    'GPU suite on one GPU: the memory of each of the two logical GPUs carved from it for the '
    'several-replica row.',
    lower_bound=1024)
flags.DEFINE_float(
    'budget_s',
    None, 'Seconds for the whole suite: a measurement starts only if its expected time still '
    'fits and is stopped when the time is up; its row says so. Default: none, or '
    f'{GPU_CHECK_BUDGET_S} for --suite=gpu_check without --quick.',
    lower_bound=0)
flags.DEFINE_bool(
    'record', None, 'Write each table as a record, benchmarks/records/CLAIM/NAME.json '
    '(benchmarks/records.py), for benchmarks.report. Default: on for full runs, off with '
    '--quick.')
flags.DEFINE_string(
    'record_name', None, 'The records\' file name within their claims (default: full, or '
    'quick with --quick).')
flags.DEFINE_string(
    'records_dir', None, 'Write records under this folder instead of benchmarks/records (a '
    'folder that comes back from another machine, a test\'s temporary folder).')
flags.DEFINE_string(
    'commit', None, 'The commit measured, for the records, where the checkout has no git '
    'history (a copy of the tree on another machine).')

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class CpuSizes:
  fraction: float  # of each split's images used (1: all 70,000)
  image_size: int
  batch_size: int
  pipeline_batches: int
  warmup_steps: int  # trainer.main's steps left out of its throughput
  timed_steps: int
  chunk_steps: int  # steps per fit call when in-memory sides alternate
  rounds: int
  start_ups: int  # start-up samples per side; the row takes each side's fastest


CPU_FULL = CpuSizes(fraction=1.0,
                    image_size=64,
                    batch_size=32,
                    pipeline_batches=3000,
                    warmup_steps=5,
                    timed_steps=30,
                    chunk_steps=8,
                    rounds=8,
                    start_ups=2)
CPU_QUICK = CpuSizes(fraction=0.1,
                     image_size=32,
                     batch_size=16,
                     pipeline_batches=300,
                     warmup_steps=2,
                     timed_steps=4,
                     chunk_steps=3,
                     rounds=2,
                     start_ups=1)


@dataclasses.dataclass(frozen=True)
class JobSizes:
  fraction: float  # of each split's images used (1: all)
  memory_image_size: int
  memory_steps: int  # training steps of the whole-job memory row
  accuracy_image_size: int
  project_flags: Tuple[str, ...] = ()  # added to the recipe's flags (quick: a short run)


BATCH_SIZE = 128  # the article's
RECIPE = 'configs/mnist_rgb.cfg'
JOBS_FULL = JobSizes(fraction=1.0, memory_image_size=64, memory_steps=2, accuracy_image_size=32)
JOBS_QUICK = JobSizes(fraction=0.02,
                      memory_image_size=32,
                      memory_steps=2,
                      accuracy_image_size=32,
                      project_flags=('--epochs=1', '--steps_per_epoch=2', '--eval_steps=1',
                                     '--recalibrate_batchnorm=2'))


@dataclasses.dataclass(frozen=True)
class RateSizes:
  """Sizes of the training-rate suites (GPU, CPU settings)."""
  image_size: int
  batch_size_per_device: int
  warmup_steps: int
  timed_steps: int
  fraction: float


GPU_FULL = RateSizes(image_size=64,
                     batch_size_per_device=128,
                     warmup_steps=30,
                     timed_steps=200,
                     fraction=1.0)
CPU_SETTINGS_FULL = RateSizes(image_size=32,
                              batch_size_per_device=128,
                              warmup_steps=5,
                              timed_steps=20,
                              fraction=1.0)
CPU_SETTINGS_QUICK = RateSizes(image_size=32,
                               batch_size_per_device=16,
                               warmup_steps=2,
                               timed_steps=4,
                               fraction=0.05)
GPU_QUICK = RateSizes(image_size=32,
                      batch_size_per_device=8,
                      warmup_steps=2,
                      timed_steps=4,
                      fraction=0.05)


@dataclasses.dataclass(frozen=True)
class MnistRunSizes:
  """The GPU check's run of the recipe on real MNIST."""
  epochs: int
  image_size: int
  batch_size: int
  warmup_steps: int  # of each epoch, left out of the training rate
  flags: Tuple[str, ...] = ()  # added to the recipe's (quick: a few steps)


MNIST_FULL = MnistRunSizes(epochs=2, image_size=64, batch_size=128, warmup_steps=10)
MNIST_QUICK = MnistRunSizes(epochs=2,
                            image_size=32,
                            batch_size=16,
                            warmup_steps=1,
                            flags=('--steps_per_epoch=3', '--eval_steps=1',
                                   '--recalibrate_batchnorm=2'))

# ---- CPU suite


def cpu_suite(dataset, sizes: CpuSizes, children: Children):
  common = dict(dataset=dataset, fraction=sizes.fraction, batch_size=sizes.batch_size)
  project = children.run('data stage, project', 'data_stage_project', common)
  article = children.run('data stage, article\'s baseline', 'data_stage_baseline',
                         dict(common, image_size=sizes.image_size))
  pipeline = children.run('input pipeline alone', 'input_pipeline',
                          dict(common, num_batches=sizes.pipeline_batches))
  training = dict(common,
                  image_size=sizes.image_size,
                  warmup_steps=sizes.warmup_steps,
                  timed_steps=sizes.timed_steps,
                  chunk_steps=sizes.chunk_steps,
                  rounds=sizes.rounds)
  # Start-up samples alternate bare, trainer.main, bare, ...; the last trainer.main run is
  # the full one, whose training gives the throughput rows.
  bare_starts, main_starts = [], []
  for sample in range(sizes.start_ups):
    bare = children.run('bare script: build and one step',
                        'bare_step',
                        dict(image_size=sizes.image_size, batch_size=sizes.batch_size),
                        module='benchmarks.bare_step')
    bare_starts.append(bare['first_step_wall'] - bare['spawned_at'])
    last = sample == sizes.start_ups - 1
    trained = children.run(
        'trainer.main, then the same model on in-memory tensors'
        if last else 'trainer.main to its first step', 'train_main',
        training if last else dict(training, start_up_only=True, warmup_steps=1, timed_steps=1))
    main_starts.append(trained['first_step_wall'] - trained['spawned_at'])
  main_start, bare_start = min(main_starts), min(bare_starts)

  model_batches_per_second = trained['main_images_per_second'] / sizes.batch_size
  raw, floats = trained['raw_bytes_per_image'], trained['float_bytes_per_image']
  step_seconds = sizes.batch_size / trained['in_memory_images_per_second']
  preprocess_share = trained['preprocess_ms_per_batch'] / 1000 / step_seconds
  rows = [
      _faster('Data stage: first data call to first training batch ready (s)', project['seconds'],
              article['seconds'], 10),
      Row('Data stage: peak resident memory, whole process (GiB)',
          f'{gib(project["peak_rss"]):.2f}',
          f'{gib(article["peak_rss"]):.2f}',
          article['peak_rss'] / project['peak_rss'],
          f'{article["peak_rss"] / project["peak_rss"]:.1f}x less',
          '>= 5x less',
          article['peak_rss'] / project['peak_rss'] >= 5,
          project_value=gib(project['peak_rss']),
          reference_value=gib(article['peak_rss'])),
      _at_least('Input pipeline alone (batches/s) vs the model\'s training rate (batches/s)',
                pipeline['batches_per_second'], model_batches_per_second, 50, 'x', '{:.1f}',
                '{:.3f}'),
      _at_least(
          'Training (img/s): trainer.main on real data vs the same model fit on '
          'in-memory tensors', trained['main_images_per_second'],
          trained['in_memory_images_per_second'], 0.95, '', '{:.1f}', '{:.1f}'),
      _at_least(
          f'In-model preprocessing (img/s): uint8 28x28x1 in vs pre-resized float32 '
          f'{sizes.image_size}x{sizes.image_size}x3 in', trained['in_memory_images_per_second'],
          trained['pre_resized_images_per_second'], 0.95, '', '{:.1f}', '{:.1f}'),
      Row(
          'Start-up: process start to first finished training step (s), trainer.main vs a '
          'bare script',
          f'{main_start:.1f}',
          f'{bare_start:.1f}',
          main_start / bare_start,
          f'{main_start / bare_start:.2f}x',
          '<= 1.2x',
          main_start / bare_start <= 1.2,
          project_value=main_start,
          reference_value=bare_start),
  ]
  notes = [
      f'Sizes: {sizes.image_size}x{sizes.image_size} images, batch {sizes.batch_size}, '
      f'{article["num_images"]:,} images prepared by the baseline' +
      ('' if sizes.fraction == 1 else f' ({sizes.fraction:.0%} of each split)') + '.',
      f'Data stage: both processes import the same libraries (TensorFlow, tf_keras, '
      f'tensorflow-datasets, numpy, OpenCV, the trainer) before the timer starts, and both '
      f'end as `fit` hands its first step its first batch (`fit` itself, stopped there: '
      f'benchmarks/first_batch.py). The baseline\'s '
      f'preparation alone took {article["prepare_seconds"]:.1f} s and holds '
      f'{gib(article["host_bytes"]):.2f} GiB of float32 images; the project holds the uint8 '
      f'images once, in memory (trainer.data.in_memory). Resize in the baseline: '
      f'{article["resize"]}.',
      f'Input pipeline: trainer.data.training_batches on the training split, timed over '
      f'{sizes.pipeline_batches} batches after the split is in memory; the '
      f'model\'s rate is trainer.main\'s steady training rate.',
      f'Training: trainer.main (--weights=none, --noexport, 1 epoch of '
      f'{sizes.warmup_steps + sizes.timed_steps} steps, the first {sizes.warmup_steps} left '
      f'out); the upper bound is the same model fit on one in-memory batch repeated. Rates are '
      f'medians over steps.',
      f'In-model preprocessing: the same model and weights, fit on in-memory batches, '
      f'alternating in {sizes.rounds} rounds of {sizes.chunk_steps} steps. The pre-resized '
      f'side feeds the backbone directly. The preprocessing alone (scale, resize, gray to '
      f'RGB, normalise) takes {trained["preprocess_ms_per_batch"]:.1f} ms per batch, '
      f'{preprocess_share:.1%} of a training step. Bytes per image into the model: {raw:,} '
      f'(uint8 28x28x1) against {floats:,} (float32 {sizes.image_size}x{sizes.image_size}x3), '
      f'{floats / raw:.0f}x fewer. Why it wins on a GPU: the host caches, shuffles and copies '
      f'over PCIe {floats / raw:.0f}x fewer bytes per image, and the resize, a tiny fraction '
      f'of a DenseNet121 step, runs on the GPU beside the data; here on the CPU the same cores '
      f'do both, so the design can at best break even.',
      f'Start-up: both timed from process start (Python, imports, building, tracing and one '
      f'step), the fastest of {sizes.start_ups} run(s) each. trainer.main runs through '
      f'main.run, as `python -m trainer.main` does, in a child that also imports the '
      f'benchmark\'s modules and OpenCV; it also reads the data, fills its shuffle buffer, '
      f'claims a run folder and logs preprocessed images before its first step. The bare '
      f'script only builds trainer.model.build_model and calls train_on_batch.',
  ]
  return rows, notes, {'tensorflow': project['tensorflow'], 'tf_keras': project['tf_keras']}


# ---- Whole jobs


def jobs_suite(dataset, mnist_idx, sizes: JobSizes, level, max_epochs, children: Children):
  # Time first: it needs the quiet machine; memory does not mind what else runs.
  if mnist_idx:
    rows, notes = time_to_accuracy(mnist_idx, sizes, level, max_epochs, children)
  else:
    rows = [
        Row('Time to accuracy on real MNIST', 'skipped: needs --mnist_idx=DIR '
            '(python ../shared/data/mnist_idx.py DIR)', '')
    ]
    notes = []
  memory_rows, memory_notes, libs = whole_job_memory(dataset, sizes, children)
  return memory_rows + rows, memory_notes + notes, libs


def time_to_accuracy(mnist_idx, sizes: JobSizes, level, max_epochs, children: Children):
  digits = dict(dataset=f'idx:{mnist_idx}',
                fraction=sizes.fraction,
                image_size=sizes.accuracy_image_size,
                level=level)
  ours = children.run(f'trainer.main to {level:.1%} validation accuracy',
                      'time_to_accuracy_project',
                      dict(digits, recipe=RECIPE, flags=list(sizes.project_flags)))
  theirs = children.run(f'the article\'s recipe to {level:.1%} validation accuracy',
                        'time_to_accuracy_article',
                        dict(digits, max_epochs=1 if sizes.fraction < 1 else max_epochs))
  row = _time_to_accuracy_row(ours, theirs, level, sizes.accuracy_image_size)
  note = (f'Time to accuracy: seconds from process start until the end of the first epoch whose '
          f'validation accuracy reaches {level:.1%}, on real MNIST ({mnist_idx}; the last 20% '
          f'of train held out), {sizes.accuracy_image_size}x{sizes.accuracy_image_size}, random '
          f'start. trainer.main runs `--flagfile={RECIPE} --weights=none` at its defaults '
          f'(--precision=auto; its augmentation, label smoothing, warmup and cosine decay); the '
          f'article\'s recipe is its preparation, DenseNet121 with a Flatten head, '
          f'ImageDataGenerator rotation and zoom, batch {BATCH_SIZE} and Adam at Keras\'s defaults '
          f'(the article names no optimizer), in float32, for at most {max_epochs} epochs. '
          f'Validation accuracy by epoch, trainer.main: {_accuracies(ours)}; the article\'s: '
          f'{_accuracies(theirs)}.')
  return [row], [note]


def whole_job_memory(dataset, sizes: JobSizes, children: Children):
  common = dict(dataset=dataset,
                fraction=sizes.fraction,
                image_size=sizes.memory_image_size,
                batch_size=BATCH_SIZE,
                steps=sizes.memory_steps)
  project = children.run('whole job, trainer.main, float32', 'whole_job_project',
                         dict(common, precision='float32'))
  article = children.run('whole job, the article\'s', 'whole_job_article', common)
  defaults = children.run('whole job, trainer.main, --precision=auto', 'whole_job_project',
                          dict(common, precision='auto'))
  size = f'{sizes.memory_image_size}x{sizes.memory_image_size}'
  rows = [
      _less_memory(
          f'Whole job, peak resident memory (GiB): trainer.main in float32 vs the '
          f'article\'s job, {size}, batch {BATCH_SIZE}', project, article),
      _less_memory(
          f'Whole job, peak resident memory (GiB): trainer.main at --precision=auto '
          f'({defaults["precision"]}) vs the article\'s job', defaults, article),
  ]
  notes = [
      f'Whole job: each side from process start to its end: the data, the model, '
      f'{sizes.memory_steps} training steps at batch {BATCH_SIZE} with validation on every '
      f'held-out image, the test on every test image, and for trainer.main its checkpoints, '
      f'TensorBoard logs and the SavedModel export. The article\'s job prepares every image '
      f'as float32 RGB in host memory and trains on ImageDataGenerator batches, in float32. '
      f'Peak resident memory by phase (each phase\'s highest sample, every 10 ms), '
      f'trainer.main in float32: {_phases(project["phases"])}; at --precision=auto: '
      f'{_phases(defaults["phases"])}; the article\'s: {_phases(article["phases"])}.'
  ]
  return rows, notes, project


def _less_memory(measure, project, article):
  ratio = article['peak_rss'] / project['peak_rss']
  return Row(measure,
             f'{gib(project["peak_rss"]):.2f}',
             f'{gib(article["peak_rss"]):.2f}',
             ratio,
             f'{ratio:.1f}x less',
             project_value=gib(project['peak_rss']),
             reference_value=gib(article['peak_rss']))


def _time_to_accuracy_row(ours, theirs, level, image_size):
  measure = (f'Time to {level:.1%} validation accuracy on real MNIST, {image_size}x{image_size}, '
             f'random start (s): trainer.main vs the article\'s recipe')
  seconds = {
      side: result['reached_wall'] and result['reached_wall'] - result['spawned_at']
      for side, result in (('ours', ours), ('theirs', theirs))
  }
  text = {side: f'{s:.0f}' if s else 'not reached' for side, s in seconds.items()}
  values = dict(project_value=seconds['ours'] or None, reference_value=seconds['theirs'] or None)
  if not (seconds['ours'] and seconds['theirs']):
    return Row(measure, text['ours'], text['theirs'], **values)
  ratio = seconds['theirs'] / seconds['ours']
  return Row(measure, text['ours'], text['theirs'], ratio, f'{ratio:.1f}x faster', **values)


def _phases(peaks):
  return ', '.join(f'{phase} {gib(peak):.2f} GiB' for phase, peak in peaks.items())


def _accuracies(result):
  return ' '.join(f'{a:.4f}' for a in result['val_accuracy'])


def _faster(measure, project_s, baseline_s, target):
  ratio = baseline_s / project_s
  return Row(measure,
             f'{project_s:.2f}',
             f'{baseline_s:.2f}',
             ratio,
             f'{ratio:.1f}x faster',
             f'>= {target}x faster',
             ratio >= target,
             project_value=project_s,
             reference_value=baseline_s)


def _at_least(measure, project, reference, target, unit, project_format, reference_format):
  ratio = project / reference
  ratio_text = f'{ratio:.0f}x' if unit == 'x' else f'{ratio:.3f}'
  return Row(measure,
             project_format.format(project),
             reference_format.format(reference),
             ratio,
             ratio_text,
             f'>= {target}{unit}',
             ratio >= target,
             project_value=project,
             reference_value=reference)


# ---- CPU settings


def cpu_settings_suite(dataset, sizes: RateSizes, children: Children):
  """trainer.main's defaults on this CPU against one change at a time."""
  variants = [
      ('--precision=float32', dict(precision='float32'), None),
      ('one inter-op thread', dict(inter_op_threads=1), None),
      ('one intra-op thread (a single core)', dict(intra_op_threads=1), None),
      (f'{os.cpu_count()} intra-op threads, one inter-op thread',
       dict(intra_op_threads=os.cpu_count(), inter_op_threads=1), None),
      ('batch 64', dict(batch_size_per_device=64), None),
      ('batch 256', dict(batch_size_per_device=256), None),
      ('oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)', {}, {
          'TF_ENABLE_ONEDNN_OPTS': '0'
      }),
  ]
  children.total = 1 + len(variants)

  def measure(what, env=None, **changes):
    params = dict(dataclasses.asdict(sizes),
                  dataset=dataset,
                  precision='auto',
                  num_gpus=0,
                  xla=False,
                  steps_per_execution=1,
                  interpolation='bicubic')
    return children.run(what, 'training_rate', dict(params, **changes), env=env)

  reference = measure('trainer.main\'s defaults')
  base = reference['images_per_second_per_device']
  rows = [
      Row(
          f'Defaults: --precision=auto ({reference["precision"]}), TensorFlow\'s thread pools, '
          f'batch {sizes.batch_size_per_device} (img/s)', f'{base:.1f}', '')
  ]
  for what, changes, env in variants:
    result = measure(what, env=env, **changes)
    rows.append(
        _speedup(f'{what}, {result["precision"]} vs the defaults (img/s)',
                 result['images_per_second_per_device'], base))
  notes = [
      f'Sizes: {sizes.image_size}x{sizes.image_size} images, batch '
      f'{sizes.batch_size_per_device} unless the row says otherwise, {sizes.timed_steps} timed '
      f'steps after {sizes.warmup_steps}; the project\'s pipeline, model and compile '
      f'(benchmarks/cases.py training_rate), one child process a row, one after another: '
      f'run it on a quiet machine. Rates are medians over steps.'
  ]
  return rows, notes, reference


# ---- GPU suite


class NoGpu(Exception):
  pass


@dataclasses.dataclass(frozen=True)
class GpuOptions:
  num_gpus: int  # the GPUs of the scaling row; 0: all visible
  precision: str  # of the scaling, XLA and steps-per-call rows
  steps_per_execution: int
  logical_memory_mb: int  # of each logical GPU when one GPU is split in two
  quick: bool
  rows: Tuple[str, ...] = GPU_ROW_GROUPS  # which of the optional rows to measure


# Seconds each measurement is expected to take on one H200-class GPU with 16 cores, at
# the full sizes: importing TensorFlow and starting CUDA, building DenseNet121, tracing
# (XLA: compiling) the step, then the timed steps. The GPU check's budget is their sum.
EXPECTED_GPU_S = {
    'devices': 15,
    'rate': 45,
    'split': 60,
    'xla': 120,
    'mnist': 110,
}


def gpu_suite(dataset,
              sizes: RateSizes,
              children: Children,
              options: GpuOptions,
              after_precisions: Optional[Callable[[dict], None]] = None):
  """Where the model runs and images/s per device: by precision, what --precision=auto picks,
  several replicas, XLA and steps per call. `after_precisions` runs between the precision rows
  and the others (the GPU check's MNIST run: worth more than the rows after it)."""
  found = children.run('visible devices and what --precision=auto picks',
                       'devices', {},
                       expected_s=EXPECTED_GPU_S['devices'])
  if 'missing' in found:
    raise ChildFailed(f'visible devices: {found["missing"]}')
  gpus = found['gpus']
  if not gpus and not options.quick:
    raise NoGpu('no GPU is visible to TensorFlow; this suite needs a CUDA machine (pip install '
                '-e .[and-cuda]) or --quick, a smoke check of its code on the CPU')
  num_gpus = (options.num_gpus or len(gpus)) if gpus else 0
  if num_gpus > len(gpus):
    raise app.UsageError(f'--num_gpus={num_gpus} but {len(gpus)} GPUs are visible')
  device = 'GPU' if gpus else 'CPU'
  precision = options.precision
  children.total = 6 + bool(gpus) + (after_precisions is not None)

  def measure(what, group, expected='rate', **config):
    if group and group not in options.rows:
      children.done += 1
      return {'missing': f'not run (--gpu_rows={",".join(options.rows)})'}
    params = dict(precision=precision,
                  num_gpus=1 if gpus else 0,
                  xla=False,
                  steps_per_execution=1,
                  interpolation='bicubic')
    return children.run(what,
                        'training_rate',
                        dict(dataclasses.asdict(sizes), dataset=dataset, **dict(params, **config)),
                        expected_s=EXPECTED_GPU_S[expected])

  # float32 always: the other rows' reference, and the model whose placement is checked.
  rates = {
      'float32':
          measure(f'float32, 1 {device}, then where the model\'s ops run',
                  None,
                  precision='float32',
                  check_placement=True)
  }
  for other in ('mixed_float16', 'mixed_bfloat16'):
    rates[other] = measure(f'{other}, 1 {device}', 'precisions', precision=other)
  f32, auto = rates['float32'], found['auto_precision']
  rows = [
      _placement_row(f32, device),
      _rate_row(f'float32, 1 {device} (img/s per {device})', f32),
      *[
          _speedup_of(f'{p} vs float32 (img/s per {device})', rates[p], f32)
          for p in ('mixed_float16', 'mixed_bfloat16')
      ],
      _speedup_of(f'--precision=auto picks {auto} here: {auto} vs float32 (img/s per {device})',
                  rates[auto], f32),
  ]
  if after_precisions:
    after_precisions(found)
  base = rates[precision]
  if num_gpus > 1:
    several = f'{num_gpus} GPUs under MirroredStrategy'
    rows.append(
        _speedup_of(f'{num_gpus} GPUs vs 1, {precision} (img/s per GPU): scaling efficiency',
                    measure(f'{num_gpus} GPUs', 'replicas', num_gpus=num_gpus, expected='split'),
                    base))
  else:
    several = (f'two logical {device}s carved from one (tf.config.'
               f'set_logical_device_configuration'
               f'{f", {options.logical_memory_mb} MiB each" if gpus else ""}) under the '
               f'MirroredStrategy that --num_gpus=2 makes (benchmarks/cases.py '
               f'logical_device_strategy: trainer.distribution.make_strategy counts physical '
               f'GPUs and refuses this). It proves the several-replica path, not its speed: '
               f'both replicas share one {device}')
    split = measure(f'2 logical {device}s carved from one, MirroredStrategy',
                    'replicas',
                    expected='split',
                    logical_devices=2,
                    logical_memory_mb=options.logical_memory_mb)
    rows.append(_split_row(split, base, device, precision))
  if gpus:
    xla = measure('XLA on', 'xla', xla=True, expected='xla')
    rows.append(
        _speedup_of(
            f'XLA (--jit_compile) on vs off, {precision}, the default bicubic model '
            '(img/s per GPU)', _took_effect(xla, 'jit_compile', True), base))
  else:
    rows.append(Row('XLA on vs off', 'skipped on CPU: compiling DenseNet121 takes minutes', ''))
  spe = options.steps_per_execution
  per_call = measure(f'{spe} steps per call', 'steps_per_execution', steps_per_execution=spe)
  rows.append(
      _speedup_of(f'steps_per_execution={spe} vs 1, {precision} (img/s per {device})',
                  _took_effect(per_call, 'steps_per_call', spe), base))
  notes = [
      f'Devices: {", ".join(gpus) or "none (a CPU smoke check, not GPU figures)"}.',
      f'Sizes: {sizes.image_size}x{sizes.image_size} images, batch {sizes.batch_size_per_device} '
      f'per device (global batch = that x devices), {sizes.timed_steps} timed steps after '
      f'{sizes.warmup_steps}; trainer.data.training_batches, trainer.model.build_model and '
      f'trainer.train.compile_for_stage under trainer.distribution\'s strategy and policy. '
      f'Rates are medians over executions, each ending in a host sync. Every row runs the '
      f'default model (bicubic resize as two matrix products, trainer/resize.py), which XLA '
      f'compiles whole.',
      _placement_note(f32),
      f'Several replicas: {several}.',
  ]
  return rows, notes, found


def _placement_row(result, device):
  measure = (f'Resize and adapter on {device}:0: the preprocessing under tf.device with soft '
             f'placement off')
  if 'missing' in result:
    return Row(measure, result['missing'], '')
  placed = result['placement']['preprocessing']
  return Row(measure,
             'yes' if 'output_device' in placed else f'no: {placed["error"]}',
             '',
             target=f'every op on {device}:0',
             met='output_device' in placed)


def _placement_note(result):
  if 'placement' not in result:
    return 'Placement: not measured.'
  placement = result['placement']
  preprocessing, forward = placement['preprocessing'], placement['forward']
  if 'output_device' not in preprocessing:
    return f'Placement: the preprocessing did not run on {placement["device"]}: ' \
           f'{preprocessing["error"]}.'
  whole = (f'the whole forward pass too, on {forward["output_device"]}' if 'output_device'
           in forward else f'the whole forward pass did not ({forward["error"]})')
  return (f'Placement: the model of the float32 row, called under tf.device('
          f'{placement["device"]!r}) with soft placement off (an op with no kernel there fails '
          f'instead of moving to the CPU): its preprocessing (scale, resize, adapter; ops '
          f'{", ".join(preprocessing["ops"])}) ran there, its output on '
          f'{preprocessing["output_device"]}; {whole}.')


def _rate_row(measure, result):
  if 'missing' in result:
    return Row(measure, result['missing'], '')
  rate = result['images_per_second_per_device']
  return Row(measure, f'{rate:.1f}', '', project_value=rate)


def _speedup_of(measure, result, reference):
  """A rate against another, from two cases' results, either of which may be missing."""
  for side in (result, reference):
    if 'missing' in side:
      return Row(measure, side['missing'] if side is result else 'reference ' + side['missing'], '')
  return _speedup(measure, result['images_per_second_per_device'],
                  reference['images_per_second_per_device'])


def _took_effect(result, setting, expected):
  """`result`, or missing if the model did not run with the setting under test."""
  if 'missing' in result or result.get(setting) == expected:
    return result
  return {'missing': f'not measured: the model ran with {setting}={result.get(setting)}'}


def _split_row(split, base, device, precision):
  measure = (f'2 logical {device}s on one {device} under MirroredStrategy vs 1 {device}, '
             f'{precision} (img/s per replica)')
  row = _speedup_of(measure, split, base)
  if 'missing' not in split:
    row.target, row.met = 'runs, 2 replicas', split['replicas'] == 2
  return row


def _speedup(measure, project, reference):
  ratio = project / reference
  return Row(measure,
             f'{project:.1f}',
             f'{reference:.1f}',
             ratio,
             f'{ratio:.2f}x',
             project_value=project,
             reference_value=reference)


# ---- The GPU check's run of the recipe on real MNIST


def mnist_run(mnist_idx, sizes: MnistRunSizes, num_gpus, children: Children, quick):
  """trainer.main with the recipe from a random start on real MNIST, to the test."""
  result = children.run(
      f'{sizes.epochs} epochs of the recipe on real MNIST, {sizes.image_size}x{sizes.image_size}',
      'recipe_run',
      dict(recipe=RECIPE,
           dataset=f'idx:{mnist_idx}',
           image_size=sizes.image_size,
           batch_size=sizes.batch_size,
           epochs=sizes.epochs,
           num_gpus=num_gpus,
           warmup_steps=sizes.warmup_steps,
           flags=list(sizes.flags)),
      expected_s=EXPECTED_GPU_S['mnist'])
  what = f'after {sizes.epochs} epochs from a random start'
  if 'missing' in result:
    return [Row(f'Test accuracy on real MNIST {what}', result['missing'], '')], [], result
  startup = result['first_step_wall'] - result['spawned_at']
  whole = result['finished_wall'] - result['spawned_at']
  accuracy = result['test_accuracy']
  rows = [
      Row(f'Test accuracy on real MNIST {what}, {sizes.image_size}x{sizes.image_size}',
          f'{accuracy:.4f}',
          '',
          target='' if quick else '>= 0.97',
          met=None if quick else accuracy >= 0.97,
          project_value=accuracy),
      Row('Validation accuracy by epoch', ' '.join(f'{a:.4f}' for a in result['val_accuracy']), ''),
      Row(f'Training (img/s), after {sizes.warmup_steps} steps of each epoch',
          f'{result["images_per_second"]:.1f}',
          '',
          project_value=result['images_per_second']),
      Row('Process start to first finished training step (s)',
          f'{startup:.1f}',
          '',
          project_value=startup),
      Row('Process start to the end of the test (s)', f'{whole:.1f}', '', project_value=whole),
  ]
  command = shlex.join([
      'python', '-m', 'trainer.main', f'--flagfile={RECIPE}', f'--dataset=idx:{mnist_idx}',
      '--weights=none', f'--image_size={sizes.image_size}', f'--batch_size={sizes.batch_size}',
      f'--epochs={sizes.epochs}', f'--num_gpus={num_gpus}', '--noexport', *sizes.flags
  ])
  notes = [
      f'`{command}`, in a child process: the recipe (augmentation, label smoothing, dropout, '
      f'warmup and cosine decay over the {sizes.epochs} epochs, BatchNorm recalibration) at '
      f'--precision=auto ({result["precision"]}), from a random start. Real MNIST: the last 20% '
      f'of its training digits validate, its test digits test the best checkpoint. The '
      f'accuracy target is a floor that a working GPU path clears, not a result to quote.'
  ]
  return rows, notes, result


def default_dataset():
  if os.path.exists(os.path.join(DEBIAN_FASHION_MNIST, 'train-images-idx3-ubyte.gz')):
    return f'idx:{DEBIAN_FASHION_MNIST}'
  return 'synthetic'


def describe_data(dataset):
  if dataset == f'idx:{DEBIAN_FASHION_MNIST}':
    return f'real Fashion-MNIST from Debian\'s dataset-fashion-mnist ({DEBIAN_FASHION_MNIST})'
  if dataset == 'synthetic':
    return 'synthetic uint8 28x28x1 images of MNIST\'s shape (60,000 + 10,000; real data absent)'
  return f'--dataset={dataset}'


@dataclasses.dataclass
class Table:
  """One table of a suite's run and where its record goes."""
  claim: str  # benchmarks/records/CLAIM/
  title: str
  rows: List[Row]
  notes: List[str]
  libs: dict  # a child's result with the tensorflow and tf_keras versions
  children: Children
  details: dict  # kept in the record beside the table: sizes, results
  name_suffix: str = ''  # after the record's name, for a second table in the same claim


def run_suite(suite, dataset, log_dir, deadline) -> List[Table]:
  quick = FLAGS.quick
  if suite == 'gpu_check' and not FLAGS.mnist_idx:
    raise app.UsageError('--suite=gpu_check needs --mnist_idx=DIR, real MNIST\'s four IDX files')
  out = []
  if suite == 'cpu':
    sizes = CPU_QUICK if quick else CPU_FULL
    children = Children(log_dir, 3 + 2 * sizes.start_ups)
    rows, notes, libs = cpu_suite(dataset, sizes, children)
    out.append(Table('cpu_suite', 'CPU suite', rows, notes, libs, children, _sizes(sizes)))
  if suite in ('cpu', 'jobs'):
    sizes = JOBS_QUICK if quick else JOBS_FULL
    children = Children(log_dir, 3 + 2 * bool(FLAGS.mnist_idx))
    rows, notes, libs = jobs_suite(dataset, FLAGS.mnist_idx, sizes, FLAGS.level, FLAGS.max_epochs,
                                   children)
    out.append(Table('jobs', 'Whole jobs', rows, notes, libs, children, _sizes(sizes)))
  if suite == 'cpu_settings':
    sizes = CPU_SETTINGS_QUICK if quick else CPU_SETTINGS_FULL
    children = Children(log_dir, 1)
    rows, notes, libs = cpu_settings_suite(dataset, sizes, children)
    out.append(Table('cpu_settings', 'CPU settings', rows, notes, libs, children, _sizes(sizes)))
  if suite in ('gpu', 'gpu_check'):
    out += gpu_tables(suite, dataset, log_dir, deadline)
  return out


def gpu_tables(suite, dataset, log_dir, deadline) -> List[Table]:
  """The GPU suite's table; for the GPU check, its run on real MNIST's too, measured right
  after the precision rows."""
  quick = FLAGS.quick
  sizes = GPU_QUICK if quick else GPU_FULL
  children = Children(log_dir, 1, deadline=deadline, keep_going=suite == 'gpu_check')
  options = GpuOptions(num_gpus=FLAGS.num_gpus,
                       precision=FLAGS.gpu_precision,
                       steps_per_execution=2 if quick else FLAGS.steps_per_execution,
                       logical_memory_mb=FLAGS.logical_gpu_memory_mb,
                       quick=quick,
                       rows=tuple(FLAGS.gpu_rows))
  mnist = []

  def run_mnist(found):
    mnist_sizes = MNIST_QUICK if quick else MNIST_FULL
    rows, notes, result = mnist_run(FLAGS.mnist_idx, mnist_sizes, 1 if found['gpus'] else 0,
                                    children, quick)
    mnist.append(
        Table('gpu_check', f'GPU check: {mnist_sizes.epochs} epochs on real MNIST', rows, notes,
              found, children, dict(_sizes(mnist_sizes), result=result), '_mnist'))

  claim, title = ('gpu_check', 'GPU check') if suite == 'gpu_check' else ('gpu_suite', 'GPU suite')
  check_mnist = suite == 'gpu_check' and 'mnist' in options.rows
  rows, notes, found = gpu_suite(dataset, sizes, children, options,
                                 run_mnist if check_mnist else None)
  notes.append('Seconds per measurement, each a process of its own: ' +
               '; '.join(f'{what}: {s:.0f} s' for what, s in children.elapsed_s.items()) + '.')
  details = dict(_sizes(sizes), devices=found)
  return [Table(claim, title, rows, notes, found, children, details)] + mnist


def _sizes(sizes):
  return {'sizes': dataclasses.asdict(sizes)}


def table_record(table: Table, dataset, machine, quick) -> dict:
  """The record of a table (see benchmarks/tables.py), as records.write stores it."""
  libs = table.libs
  versions = {k: libs.get(k, 'unknown') for k in ('tensorflow', 'tf_keras')}
  kind = 'quick smoke run: sizes shrunk, not the figures to quote' if quick else 'full run'
  header = [
      f'{machine["date"]}, {kind}',
      f'Machine: {machine["cpu"]}, {machine["cores"]} cores; Python {machine["python"]}, '
      f'TensorFlow {versions["tensorflow"]}, tf_keras {versions["tf_keras"]}',
      f'Data: {describe_data(dataset)}'
  ]
  return tables.suite_record(shlex.join(['python', '-m', 'benchmarks.run', *sys.argv[1:]]),
                             FLAGS.suite,
                             'quick' if quick else 'full',
                             table.title,
                             header,
                             table.rows,
                             table.notes,
                             data=describe_data(dataset),
                             dataset=dataset,
                             versions={
                                 'python': machine['python'],
                                 **versions
                             },
                             elapsed_s=dict(table.children.elapsed_s),
                             **table.details)


def should_record():
  return FLAGS.record if FLAGS.record is not None else not FLAGS.quick


def main(argv):
  del argv
  dataset = FLAGS.dataset or default_dataset()
  log_dir = FLAGS.child_logs or tempfile.mkdtemp(prefix='benchmarks_')
  os.makedirs(log_dir, exist_ok=True)
  print(f'Child logs: {log_dir}', file=sys.stderr)
  machine = machine_description()
  budget_s = FLAGS.budget_s
  if budget_s is None and FLAGS.suite == 'gpu_check' and not FLAGS.quick:
    budget_s = GPU_CHECK_BUDGET_S
  started = time.monotonic()
  try:
    suite_tables = run_suite(FLAGS.suite, dataset, log_dir,
                             started + budget_s if budget_s else None)
  except (ChildFailed, NoGpu) as e:
    sys.exit(f'error: {e}')
  name = FLAGS.record_name or ('quick' if FLAGS.quick else 'full')
  text = ''
  for table in suite_tables:
    record = table_record(table, dataset, machine, FLAGS.quick)
    if FLAGS.commit:
      record['commit'] = FLAGS.commit
    if should_record():
      path = records.write(table.claim, name + table.name_suffix, record, FLAGS.records_dir)
      print(f'Record: {path}', file=sys.stderr)
    text += tables.markdown(record) + '\n'
  print(text)
  print(f'Took {time.monotonic() - started:.0f} s', file=sys.stderr)
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      f.write(text)


if __name__ == '__main__':
  app.run(main)
