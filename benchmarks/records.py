"""Records: one small JSON file per measurement, the only source of the figures we publish.

  benchmarks/records/<claim>/<name>.json

`python -m benchmarks.report` renders benchmarks/RESULTS.md from these files alone, and
every figure in README.md must appear on that page (tests/test_report.py checks both).
Every record says what was measured, how, where and at which commit:

  claim     the table it belongs to, e.g. 'mnist_accuracy' or 'cpu_suite'
  name      its file name within the claim
  command   the command that produced it, to rerun it
  commit    the git commit of the code measured ('+dirty': with uncommitted changes)
  machine   CPU model, cores, memory, GPUs
  recorded  when (UTC, ISO 8601)

and then what the claim needs: for runs of trainer.main (benchmarks/accuracy.py) the data,
start, settings, validation accuracy by epoch, test figures and wall time; for the
benchmark suites (benchmarks/run.py) their table's rows and notes.
"""
import datetime
import glob
import json
import os
import platform
import subprocess
from typing import Dict, List

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDS_DIR = os.path.join(REPO_ROOT, 'benchmarks', 'records')


def write(claim: str, name: str, record: dict) -> str:
  """Writes `record` with its provenance filled in where missing; returns the file's path."""
  record = {'claim': claim, 'name': name, **provenance(), **record}
  path = os.path.join(RECORDS_DIR, claim, f'{name}.json')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(record, f, indent=2, sort_keys=False)
    f.write('\n')
  return path


def read_all(records_dir: str = RECORDS_DIR) -> Dict[str, List[dict]]:
  """Every record, by claim, each claim's records in file-name order."""
  claims: Dict[str, List[dict]] = {}
  for path in sorted(glob.glob(os.path.join(records_dir, '*', '*.json'))):
    with open(path) as f:
      record = json.load(f)
    record['file'] = os.path.relpath(path, REPO_ROOT)
    claims.setdefault(os.path.basename(os.path.dirname(path)), []).append(record)
  return claims


def provenance() -> dict:
  return {'commit': commit(), 'machine': machine(), 'recorded': now()}


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def commit() -> str:
  """The checkout's commit, '+dirty' if tracked files differ from it; 'unknown' outside git."""
  try:
    head = subprocess.run(['git', 'rev-parse', '--short=10', 'HEAD'],
                          cwd=REPO_ROOT,
                          capture_output=True,
                          text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                           cwd=REPO_ROOT,
                           capture_output=True,
                           text=True,
                           check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'
  return head + ('+dirty' if dirty else '')


def machine() -> str:
  """'CPU model, N cores (flags), M GiB' and the GPUs nvidia-smi lists, if any."""
  cpu, flags = platform.machine(), set()
  try:
    with open('/proc/cpuinfo') as f:
      lines = f.read().splitlines()
    cpu = next((line.split(':', 1)[1].strip() for line in lines if line.startswith('model name')),
               cpu)
    flags = set(
        next((line.split(':', 1)[1].split() for line in lines if line.startswith('flags')), []))
  except OSError:
    pass
  memory_gib = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
  bf16 = sorted(flags & {'avx512_bf16', 'amx_bf16'})
  text = (f'{cpu}, {os.cpu_count()} cores{" (" + ", ".join(bf16) + ")" if bf16 else ""}, '
          f'{memory_gib:.0f} GiB')
  gpus = _gpus()
  return f'{text}; {gpus}' if gpus else f'{text}, no GPU'


def _gpus() -> str:
  try:
    names = subprocess.run(['nvidia-smi', '--query-gpu=name', '--format=csv,noheader'],
                           capture_output=True,
                           text=True,
                           timeout=30,
                           check=True).stdout.split('\n')
  except (OSError, subprocess.SubprocessError):
    return ''
  names = [name.strip() for name in names if name.strip()]
  return f'{len(names)}x {names[0]}' if names else ''
