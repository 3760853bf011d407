"""Renders benchmarks/RESULTS.md, and the figures of README.md, from the records.

  python -m benchmarks.report           # rewrite both from benchmarks/records/
  python -m benchmarks.report --check   # exit 1 if either differs from what the records give

Every figure on the page comes from a record (benchmarks/records.py): one current table
per claim, then the decision log, whose evidence points at the records of earlier rounds.
README.md holds two blocks this script writes (between `<!-- NAME: rendered ... -->` and
`<!-- end of NAME -->`): `cost`, what the main job costs, and `results`, at most six rows
of the page's figures. Nothing here measures: to change a figure, rerun its command.
"""
import dataclasses
import json
import os
import re
import statistics
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from absl import app, flags

from benchmarks import records, tables

RESULTS_FILE = os.path.join(records.REPO_ROOT, 'benchmarks', 'RESULTS.md')
README_FILE = os.path.join(records.REPO_ROOT, 'README.md')
DECISIONS_FILE = os.path.join(records.RECORDS_DIR, 'decisions.json')
# The article's test accuracy after about 30 epochs, for scale.
ARTICLE_ACCURACY = {'rgb': 0.9944, 'conv': 0.9935}
README_ROWS = 6
ADAPTER_ORDER = ('rgb', 'conv')  # the article's order

Claims = Dict[str, List[dict]]


@dataclasses.dataclass(frozen=True)
class Section:
  claim: str
  render: Callable[[List[dict]], str]
  title: str = ''  # the heading; a suite's record has its own


def link(title: str) -> str:
  """A heading's address from README.md (GitHub's anchor for it)."""
  anchor = ''.join(c for c in title.lower() if c.isalnum() or c in ' -').replace(' ', '-')
  return f'benchmarks/RESULTS.md#{anchor}'


# ---- Accuracy claims: one row per configuration, over its seeds


def configuration(record: dict) -> Tuple:
  """What makes two runs repeats of each other: everything but the seed."""
  return (record['data'], record['start'], record['adapter'], record['image_size'],
          record['epochs'], json.dumps(record.get('settings', {}), sort_keys=True))


def by_configuration(claim_records: Sequence[dict]) -> List[List[dict]]:
  """The records grouped by configuration, each group in seed order."""
  groups: Dict[Tuple, List[dict]] = {}
  for record in claim_records:
    groups.setdefault(configuration(record), []).append(record)
  ordered = sorted(groups.values(), key=lambda group: ADAPTER_ORDER.index(group[0]['adapter']))
  return [sorted(group, key=lambda r: r.get('seed', 0)) for group in ordered]


def spread(values: Sequence[float], digits: int = 2, percent: bool = True) -> str:
  """'mean [min-max]', or the value alone for one."""
  scale, unit = (100, '%') if percent else (1, '')
  text = lambda v: f'{v * scale:.{digits}f}{unit}'
  if len(values) == 1:
    return text(values[0])
  return f'{text(statistics.mean(values))} [{text(min(values))}-{text(max(values))}]'


def best_validation(record: dict) -> float:
  """The best validation accuracy: from the curve where the record has one."""
  return max(record['val_accuracy']) if 'val_accuracy' in record else record['best_val_accuracy']


def minutes(group: Sequence[dict]) -> str:
  seconds = [r['wall_s'] for r in group if 'wall_s' in r]
  return f'{statistics.mean(seconds) / 60:.0f} min' if seconds else ''


def _record_link(record: dict) -> str:
  return os.path.relpath(os.path.join(records.REPO_ROOT, record['file']),
                         os.path.dirname(RESULTS_FILE))


def accuracy_section(intro: str) -> Callable[[List[dict]], str]:

  def render(claim_records: List[dict]) -> str:
    lines = [
        intro, '', '| Configuration | Seeds | Test accuracy, mean [min-max] | Best validation, '
        'mean [min-max] | Wall time, mean | Commits |', '| --- | ---: | ---: | ---: | ---: | --- |'
    ]
    groups = by_configuration(claim_records)
    for group in groups:
      first = group[0]
      settings = ''.join(f' --{k}={v}' for k, v in first.get('settings', {}).items())
      links = ', '.join(f'[{r["commit"][:7]}]({_record_link(r)})' for r in group)
      lines.append(f'| {first["adapter"]}, {first["image_size"]}x{first["image_size"]}, '
                   f'{first["epochs"]} epochs{settings} | '
                   f'{len(group)} ({", ".join(str(r["seed"]) for r in group)}) | '
                   f'**{spread([r["test_accuracy"] for r in group])}** | '
                   f'{spread([best_validation(r) for r in group], 4, percent=False)} | '
                   f'{minutes(group)} | {links} |')
    lines += ['', 'Data, start and hardware, by configuration:', '']
    lines += [
        f'- {g[0]["adapter"]}: {g[0]["data"]}; {g[0]["start"]} start; {g[0]["machine"]}.'
        for g in groups
    ]
    lines += ['', 'Commands (the runs differ in their config and `--seed`):', '']
    lines += [
        f'    {command}' for command in sorted({_without_seed(r['command']) for r in claim_records})
    ]
    lines += ['', 'Validation accuracy by epoch, and what each record notes:', '']
    lines += [_run_line(r) for group in groups for r in group]
    return '\n'.join(lines) + '\n'

  return render


def _without_seed(command: str) -> str:
  return ' '.join(part for part in command.split() if not part.startswith('--seed='))


def _run_line(record: dict) -> str:
  curve = ' '.join(f'{v:.4f}'.lstrip('0') for v in record.get('val_accuracy', []))
  curve = curve or f'no curve recorded, best {best_validation(record):.4f}'
  note = f' {record["note"]}' if record.get('note') else ''
  return f'- `{record["name"]}`: {curve}; test {record["test_accuracy"]:.2%}.{note}'


# ---- Benchmark suites: their own table, as benchmarks/run.py printed it


def suite_section(claim_records: List[dict]) -> str:
  """The newest full run's table (its own heading), and the command that measured it."""
  record = _newest([r for r in claim_records if r.get('kind') != 'quick'] or claim_records)
  note = f' {record["note"]}' if record.get('note') else ''
  return (tables.markdown(record) + f'\nCommand: `{record["command"]}`, at {record["commit"]}, '
          f'{record["recorded"]} ([record]({_record_link(record)})).{note}\n')


def _newest(claim_records: Sequence[dict]) -> dict:
  return max(claim_records, key=lambda r: r['recorded'])


# ---- Your own images: folders against the same data as IDX files, streaming, scanning


def own_images_section(claim_records: List[dict]) -> str:
  by_name = {r['name']: r for r in claim_records}
  lines = [
      'Real MNIST and Fashion-MNIST written as class folders of PNG and JPEG files (20-120 '
      'pixels a side, a quarter in colour) by `python -m benchmarks.own_images`, trained from '
      'a random start at 32x32 for the same number of steps as from their IDX files, with '
      'the same flags and the same test images.', '',
      '| Data | Read from | Test accuracy | Best validation | Epochs | Wall time | Record |',
      '| --- | --- | ---: | ---: | ---: | ---: | --- |'
  ]
  for data in ('mnist', 'fashion_mnist'):
    for source, label in (('folder', 'class folders of files'), ('idx', 'IDX files')):
      r = by_name.get(f'accuracy_{data}_{source}')
      if r:
        lines.append(f'| {data} | {label} | **{r["test_accuracy"]:.2%}** | '
                     f'{best_validation(r):.4f} | {r["epochs"]} | {minutes([r])} | '
                     f'[{r["commit"][:7]}]({_record_link(r)}) |')
  throughput, memory = by_name.get('throughput_64'), by_name.get('memory_streaming')
  if throughput:
    lines += [
        '', f'Streaming: training at {throughput["image_size"]}x{throughput["image_size"]}, '
        f'batch {throughput["batch_size"]}, {throughput["precision"]}, streamed from the '
        f'prepared files at **{throughput["streamed_over_in_memory"]:.3f}** of the rate from '
        f'memory ({throughput["streamed_images_per_second"]} against '
        f'{throughput["in_memory_images_per_second"]} img/s, median step rate; target at '
        f'least 0.95) ([record]({_record_link(throughput)})).'
    ]
  if memory:
    lines += [
        '', f'Memory: a {memory["split_uint8_mib"]} MiB split streamed '
        f'{memory["passes_streamed"]:.0f} times under a {memory["budget_mib"]} MiB budget held '
        f'the process at {memory["peak_rss_mib_streaming"]} MiB at most, and grew it by '
        f'{memory["rss_growth_mib_after_first_quarter"]} MiB after the first quarter; read '
        f'into memory instead, it took {memory["rss_mib_after_reading_in_memory"]} MiB '
        f'([record]({_record_link(memory)})).'
    ]
  scans = [r for r in claim_records if r['name'].startswith('scan_')]
  if scans:
    lines += [
        '', 'Scanning a folder for unreadable files before training: ' +
        '; '.join(f'{r["files"]:,} files in {r["scan_seconds"]} s ([record]({_record_link(r)}))'
                  for r in scans) + '.'
    ]
  commands = sorted(
      {r['command'].replace('/work/venv/bin/python', 'python') for r in claim_records})
  lines += ['', 'Commands:', ''] + [f'    {command}' for command in commands]
  return '\n'.join(lines) + '\n'


# ---- The page

SECTIONS = [
    Section('mnist_32',
            title='Real MNIST from a random start, 32x32, 10 epochs',
            render=accuracy_section(
                'The recipe (configs/mnist_recipe.cfg) with `--weights=none --image_size=32`. '
                'Validation accuracy picks each run\'s checkpoint; the test split was read once '
                f'per run. The article, for scale: {ARTICLE_ACCURACY["rgb"]:.2%} (rgb) and '
                f'{ARTICLE_ACCURACY["conv"]:.2%} (conv) at 64x64 from ImageNet after about 30 '
                'epochs.')),
    Section('mnist_64',
            title='Real MNIST from a random start, 64x64, 10 epochs',
            render=accuracy_section(
                'The configs as they are (64x64, the article\'s size) with `--weights=none`: the '
                'recipe was tuned at 32x32; does it hold at four times the pixels?')),
    Section('mnist_imagenet',
            title='Real MNIST from ImageNet weights, 64x64, 10 epochs',
            render=accuracy_section('configs/mnist_rgb.cfg and configs/mnist_conv.cfg as they are '
                                    '(bash benchmarks/accuracy.sh).')),
    Section('own_images',
            title='Your own images: folders of files, streaming',
            render=own_images_section),
    Section('jobs', suite_section),
    Section('cpu_suite', suite_section),
    Section('cpu_settings', suite_section),
    Section('gpu_check', suite_section),
    Section('gpu_suite', suite_section),
]


def decision_log(decisions: Sequence[dict]) -> str:
  lines = [
      '## Decision log', '',
      'How the defaults came to be, oldest first: each line is a change, the paired evidence '
      'for it, and the records that hold that evidence (measured at the commits they name, '
      'often on a shared machine).', ''
  ]
  for d in decisions:
    links = ', '.join(f'[{name}](records/history/{name}.json)' for name in d['records'])
    lines.append(f'- `{d["commit"]}` {d["decision"]} {d["evidence"]} ({links})')
  return '\n'.join(lines) + '\n'


def render_results(claims: Claims, decisions: Sequence[dict]) -> str:
  parts = [
      '# Results', '', 'Rendered by `python -m benchmarks.report` from the records in '
      '[benchmarks/records/](records/): one JSON file per measurement, with its command, '
      'commit, machine and figures. Edit the records, not this page: tests/test_report.py '
      'fails when the two disagree.', ''
  ]
  for section in SECTIONS:
    if claims.get(section.claim):
      heading = [f'## {section.title}', ''] if section.title else []
      parts += [*heading, section.render(claims[section.claim])]
  if decisions:
    parts.append(decision_log(decisions))
  return '\n'.join(parts)


# ---- README.md's blocks: figures of the page above, and where they are


def readme_results(claims: Claims) -> str:
  """At most README_ROWS rows: accuracy first, then the whole jobs against the article's."""
  titles = {section.claim: section.title for section in SECTIONS}
  rows = []
  for claim in ('mnist_32', 'mnist_64', 'mnist_imagenet'):
    for group in by_configuration(claims.get(claim, [])):
      first = group[0]
      size = f'{first["image_size"]}x{first["image_size"]}'
      rows.append((f'MNIST test accuracy, {first["adapter"]}, {size}, {first["start"]} start, '
                   f'{first["epochs"]} epochs ({len(group)} seed{"s" * (len(group) > 1)})',
                   spread([r['test_accuracy'] for r in group]),
                   f'{ARTICLE_ACCURACY[first["adapter"]]:.2%} (the article: 64x64, ImageNet, '
                   '~30 epochs)', link(titles[claim])))
  if claims.get('jobs'):
    jobs = _newest(claims['jobs'])
    for row in jobs['rows']:
      if row.get('ratio') and re.search(r'peak resident memory|Time to', row['measure']):
        rows.append((row['measure'], f'{row["project"]} ({row["ratio_text"]})',
                     f'{row["reference"]} (the article\'s job)', link(jobs['title'])))
  lines = ['| Measure | This project | Reference |', '| --- | ---: | --- |']
  lines += [f'| [{m}]({link}) | **{ours}** | {ref} |' for m, ours, ref, link in rows[:README_ROWS]]
  return '\n'.join(lines)


def readme_cost(claims: Claims) -> str:
  """What the main job (configs/mnist_*.cfg, 64x64, 10 epochs) costs, where it was measured."""
  cpu = claims.get('mnist_64', [])
  gpu = claims.get('gpu_check', [])
  parts = []
  if cpu:
    runs = ' and '.join(f'{minutes([r])} ({r["adapter"]})' for r in cpu)
    parts.append(f'its 10 epochs at 64x64 took {runs} on {cpu[0]["machine"]}, '
                 'shared with other work')
  if gpu:
    parts.append(f'on {_newest(gpu)["machine"]}: see the GPU check')
  else:
    parts.append('on a GPU it has not been measured yet (`bash benchmarks/gpu_check.sh` '
                 'is the first thing to run there)')
  return 'What the main job costs: ' + '; '.join(parts) + '.'


def config_measured(adapter: str) -> Callable[[Claims], str]:
  """What configs/mnist_ADAPTER.cfg measured, for the comment block that opens it."""

  def render(claims: Claims) -> str:
    lines = []
    for claim, start in (('mnist_imagenet', 'From ImageNet'), ('mnist_64', 'From a random start'),
                         ('mnist_32', 'From a random start at --image_size=32')):
      for group in by_configuration(claims.get(claim, [])):
        if group[0]['adapter'] == adapter:
          lines.append(f'{start}: test accuracy {spread([r["test_accuracy"] for r in group])} '
                       f'({len(group)} seed{"s" * (len(group) > 1)}, {minutes(group)} a run '
                       f'on {group[0]["machine"]}).')
    if not claims.get('mnist_imagenet'):
      lines.append('From ImageNet: not measured yet (a GPU run of bash benchmarks/accuracy.sh).')
    return '\n'.join(f'# {line}' for line in lines)

  return render


# The files whose blocks this script writes, and each block's renderer.
RENDERED_BLOCKS = {
    README_FILE: {
        'cost': readme_cost,
        'results': readme_results
    },
    **{
        os.path.join(records.REPO_ROOT, 'configs', f'mnist_{adapter}.cfg'): {
            'measured': config_measured(adapter)
        } for adapter in ADAPTER_ORDER
    },
}


def with_block(text: str, name: str, block: str) -> str:
  """`text` with block `name`'s lines replaced by `block`. The markers may stand in comments
  (`# <!-- ... -->` in a flagfile)."""
  begin, end = f'<!-- {name}: rendered by python -m benchmarks.report -->', f'<!-- end of {name} -->'
  start, stop = text.find(begin), text.find(end)
  if start < 0 or stop < start:
    raise ValueError(f'it lacks the markers {begin!r} ... {end!r}')
  end_line_start = text.rfind('\n', 0, stop) + 1
  return f'{text[:start]}{begin}\n{block}\n{text[end_line_start:]}'


def rendered(records_dir: Optional[str] = None) -> Dict[str, str]:
  """{path: text} of RESULTS.md and of every file with rendered blocks, as the records give
  them."""
  claims = records.read_all(records_dir or records.RECORDS_DIR)
  decisions = []
  if os.path.exists(DECISIONS_FILE):
    with open(DECISIONS_FILE) as f:
      decisions = json.load(f)
  texts = {RESULTS_FILE: render_results(claims, decisions)}
  for path, blocks in RENDERED_BLOCKS.items():
    with open(path) as f:
      text = f.read()
    for name, render in blocks.items():
      try:
        text = with_block(text, name, render(claims))
      except ValueError as e:
        raise ValueError(f'{path}: {e}') from None
    texts[path] = text
  return texts


flags.DEFINE_bool('check', False, 'Only compare: exit 1 if a rendered file differs.')


def main(argv: List[str]) -> None:
  del argv
  texts = rendered()
  if flags.FLAGS.check:
    stale = [path for path, text in texts.items() if open(path).read() != text]
    if stale:
      sys.exit(f'error: {", ".join(stale)} differ from the records; run python -m '
               'benchmarks.report')
    return
  for path, text in texts.items():
    with open(path, 'w') as f:
      f.write(text)
    print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
