"""The benchmark suites: each prints a markdown table of the project against a reference.

  python -m benchmarks.run --suite=cpu [--quick] [--output=FILE]
  python -m benchmarks.run --suite=gpu [--num_gpus=N] [--quick] [--output=FILE]

Run from the repository root. Each row is the project's figure, the baseline's or the
reference's figure, and their ratio, measured in the same run on the same data, image
size and batch size; every figure comes from a child process (benchmarks/cases.py).
--quick shrinks every size for a smoke check of the code: its figures are not the ones
to quote.
"""
import dataclasses
import json
import os
import sys
import tempfile
from typing import List, Optional, Tuple

from absl import app, flags

from benchmarks.measure import ChildFailed, gib, machine_description, run_child

DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'  # Debian's dataset-fashion-mnist

flags.DEFINE_enum(
    'suite', 'cpu', ['cpu', 'jobs', 'cpu_settings', 'gpu'], 'cpu: the project against the '
    'article\'s approach on this machine, its parts and then whole jobs; jobs: only the whole '
    'jobs (peak memory, time to accuracy); cpu_settings: training img/s on this CPU by '
    'precision, thread pools, batch size and oneDNN; gpu: images/s per GPU by precision, '
    'GPUs, XLA, steps per call.')
flags.DEFINE_bool('quick', False, 'Small sizes: a smoke check of the code in a few minutes.')
flags.DEFINE_string(
    'dataset', None, 'The data, as trainer.main\'s --dataset: default '
    f'idx:{DEBIAN_FASHION_MNIST} where Debian\'s dataset-fashion-mnist is '
    'installed, else synthetic data of the same shape.')
flags.DEFINE_string(
    'mnist_idx', None, 'Folder of real MNIST\'s IDX files for the time-to-accuracy row '
    '(python ../shared/data/mnist_idx.py DIR writes them); without it the row is skipped.')
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
                      project_flags=('--epochs=1', '--steps_per_epoch=2', '--eval_steps=1'))


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


@dataclasses.dataclass
class Row:
  measure: str
  project: str
  reference: str
  ratio: Optional[float] = None
  ratio_text: str = ''
  target: str = ''
  met: Optional[bool] = None


class Children:
  """Runs the cases one after another, saying what runs; logs go to one folder."""

  def __init__(self, log_dir, total):
    self.log_dir = log_dir
    self.total = total
    self.done = 0

  def run(self, what, case, params, module='benchmarks.cases', env=None):
    self.done += 1
    print(f'[{self.done}/{self.total}] {what} ...', file=sys.stderr, flush=True)
    name = f'{self.done:02d}_{case}'
    args = [case, json.dumps(params)] if module == 'benchmarks.cases' else [json.dumps(params)]
    return run_child(module, args, os.path.join(self.log_dir, name + '.log'), env=env)


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
          f'{gib(project["peak_rss"]):.2f}', f'{gib(article["peak_rss"]):.2f}',
          article['peak_rss'] / project['peak_rss'],
          f'{article["peak_rss"] / project["peak_rss"]:.1f}x less', '>= 5x less',
          article['peak_rss'] / project['peak_rss'] >= 5),
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
          'bare script', f'{main_start:.1f}', f'{bare_start:.1f}', main_start / bare_start,
          f'{main_start / bare_start:.2f}x', '<= 1.2x', main_start / bare_start <= 1.2),
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
      f'images once, in its tf.data cache. Resize in the baseline: {article["resize"]}.',
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
  return Row(measure, f'{gib(project["peak_rss"]):.2f}', f'{gib(article["peak_rss"]):.2f}', ratio,
             f'{ratio:.1f}x less')


def _time_to_accuracy_row(ours, theirs, level, image_size):
  measure = (f'Time to {level:.1%} validation accuracy on real MNIST, {image_size}x{image_size}, '
             f'random start (s): trainer.main vs the article\'s recipe')
  seconds = {
      side: result['reached_wall'] and result['reached_wall'] - result['spawned_at']
      for side, result in (('ours', ours), ('theirs', theirs))
  }
  text = {side: f'{s:.0f}' if s else 'not reached' for side, s in seconds.items()}
  if not (seconds['ours'] and seconds['theirs']):
    return Row(measure, text['ours'], text['theirs'])
  ratio = seconds['theirs'] / seconds['ours']
  return Row(measure, text['ours'], text['theirs'], ratio, f'{ratio:.1f}x faster')


def _phases(peaks):
  return ', '.join(f'{phase} {gib(peak):.2f} GiB' for phase, peak in peaks.items())


def _accuracies(result):
  return ' '.join(f'{a:.4f}' for a in result['val_accuracy'])


def _faster(measure, project_s, baseline_s, target):
  ratio = baseline_s / project_s
  return Row(measure, f'{project_s:.2f}', f'{baseline_s:.2f}', ratio, f'{ratio:.1f}x faster',
             f'>= {target}x faster', ratio >= target)


def _at_least(measure, project, reference, target, unit, project_format, reference_format):
  ratio = project / reference
  ratio_text = f'{ratio:.0f}x' if unit == 'x' else f'{ratio:.3f}'
  return Row(measure, project_format.format(project), reference_format.format(reference), ratio,
             ratio_text, f'>= {target}{unit}', ratio >= target)


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


def gpu_suite(dataset, sizes: RateSizes, children: Children, num_gpus, precision, spe, quick):
  found = children.run('visible devices', 'devices', {})
  gpus = found['gpus']
  if gpus:
    num_gpus = num_gpus or len(gpus)
    one = 1
  elif quick:
    num_gpus, one = 0, 0  # a CPU smoke check of the code: no scaling or XLA rows
  else:
    raise app.UsageError('no GPU is visible to TensorFlow; --suite=gpu needs a CUDA machine '
                         '(pip install -e .[and-cuda]), or add --quick for a CPU smoke check')
  if num_gpus > len(gpus):
    raise app.UsageError(f'--num_gpus={num_gpus} but {len(gpus)} GPUs are visible')
  children.total = 6 + (num_gpus > 1) + bool(gpus)

  def measure(what, full_result=False, **config):
    params = dict(
        dict(precision=precision,
             num_gpus=one,
             xla=False,
             steps_per_execution=1,
             interpolation='bicubic'), **config)
    result = children.run(what, 'training_rate',
                          dict(dataclasses.asdict(sizes), dataset=dataset, **params))
    return result if full_result else result['images_per_second_per_device']

  device = 'GPU' if gpus else 'CPU'
  by_precision = {p: measure(p, precision=p) for p in ('float32', 'mixed_float16', 'mixed_bfloat16')}
  f32 = by_precision['float32']
  base = by_precision[precision]
  rows = [Row(f'float32, 1 {device} (img/s per {device})', f'{f32:.1f}', '')]
  for other in ('mixed_float16', 'mixed_bfloat16'):
    rows.append(_speedup(f'{other} vs float32 (img/s per {device})', by_precision[other], f32))
  auto = measure('--precision=auto', precision='auto', full_result=True)
  rows.append(
      _speedup(f'--precision=auto ({auto["precision"]}) vs float32 (img/s per {device})',
               auto['images_per_second_per_device'], f32))
  if num_gpus > 1:
    multi = measure(f'{num_gpus} GPUs', num_gpus=num_gpus)
    rows.append(
        _speedup(f'{num_gpus} GPUs vs 1, {precision} (img/s per GPU): scaling '
                 'efficiency', multi, base))
  else:
    rows.append(Row('Several GPUs vs 1: scaling efficiency', 'skipped: one GPU or none', ''))
  if gpus:
    rows.append(
        _speedup(
            f'XLA (--jit_compile) on vs off, {precision}, the default bicubic model '
            '(img/s per GPU)', measure('XLA on', xla=True), base))
  else:
    rows.append(Row('XLA on vs off', 'skipped on CPU: compiling DenseNet121 takes minutes', ''))
  rows.append(
      _speedup(f'steps_per_execution={spe} vs 1, {precision} (img/s per {device})',
               measure(f'{spe} steps per call', steps_per_execution=spe), base))
  notes = [
      f'Devices: {", ".join(gpus) or "none (a CPU smoke check, not GPU figures)"}.',
      f'Sizes: {sizes.image_size}x{sizes.image_size} images, batch {sizes.batch_size_per_device} '
      f'per device (global batch = that x devices), {sizes.timed_steps} timed steps after '
      f'{sizes.warmup_steps}; trainer.data.training_batches, trainer.model.build_model and '
      f'trainer.train.compile_for_stage under trainer.distribution\'s strategy and policy. '
      f'Rates are medians over executions, each ending in a host sync. Every row runs the '
      f'default model (bicubic resize as two matrix products, trainer/resize.py), which XLA '
      f'compiles whole.',
  ]
  return rows, notes, found


def _speedup(measure, project, reference):
  ratio = project / reference
  return Row(measure, f'{project:.1f}', f'{reference:.1f}', ratio, f'{ratio:.2f}x')


# ---- The table


def table(title, rows: List[Row], notes, header_lines):
  lines = [f'## {title}', '']
  lines += [f'- {line}' for line in header_lines]
  lines += [
      '', '| Measure | Project | Baseline / reference | Ratio | Target | Met |',
      '| --- | ---: | ---: | ---: | --- | --- |'
  ]
  for r in rows:
    met = '' if r.met is None else ('yes' if r.met else '**no**')
    lines.append(f'| {r.measure} | {r.project} | {r.reference} | {r.ratio_text} | {r.target} '
                 f'| {met} |')
  lines += [''] + [f'- {note}' for note in notes]
  return '\n'.join(lines) + '\n'


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


def main(argv):
  del argv
  dataset = FLAGS.dataset or default_dataset()
  log_dir = FLAGS.child_logs or tempfile.mkdtemp(prefix='benchmarks_')
  os.makedirs(log_dir, exist_ok=True)
  print(f'Child logs: {log_dir}', file=sys.stderr)
  machine = machine_description()
  kind = 'quick smoke run: sizes shrunk, not the figures to quote' if FLAGS.quick else 'full run'
  try:
    tables = []
    if FLAGS.suite == 'cpu':
      sizes = CPU_QUICK if FLAGS.quick else CPU_FULL
      tables.append(
          ('CPU suite', *cpu_suite(dataset, sizes, Children(log_dir, 3 + 2 * sizes.start_ups))))
    if FLAGS.suite in ('cpu', 'jobs'):
      tables.append(('Whole jobs', *jobs_suite(
          dataset, FLAGS.mnist_idx, JOBS_QUICK if FLAGS.quick else JOBS_FULL, FLAGS.level,
          FLAGS.max_epochs, Children(log_dir, 3 + 2 * bool(FLAGS.mnist_idx)))))
    if FLAGS.suite == 'cpu_settings':
      tables.append(('CPU settings', *cpu_settings_suite(
          dataset, CPU_SETTINGS_QUICK if FLAGS.quick else CPU_SETTINGS_FULL, Children(log_dir, 1))))
    if FLAGS.suite == 'gpu':
      tables.append(
          ('GPU suite', *gpu_suite(dataset, GPU_QUICK if FLAGS.quick else GPU_FULL,
                                   Children(log_dir, 1), FLAGS.num_gpus, FLAGS.gpu_precision,
                                   2 if FLAGS.quick else FLAGS.steps_per_execution, FLAGS.quick)))
  except ChildFailed as e:
    sys.exit(f'error: {e}')
  text = ''
  for title, rows, notes, libs in tables:
    header = [
        f'{machine["date"]}, {kind}',
        f'Machine: {machine["cpu"]}, {machine["cores"]} cores; Python {machine["python"]}, '
        f'TensorFlow {libs["tensorflow"]}, tf_keras {libs["tf_keras"]}',
        f'Data: {describe_data(dataset)}'
    ]
    text += table(title, rows, notes, header) + '\n'
  print(text)
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      f.write(text)


if __name__ == '__main__':
  app.run(main)
