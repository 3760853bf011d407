"""Measuring: child processes and their runner, peak memory, step timings, the machine. No
TensorFlow here.

Every measurement runs in a child process of its own, so each side's peak resident
memory is its own, TensorFlow starts fresh (devices, mixed-precision policy, XLA), and
a start-up time is measured from a real process start. A child prints one line,
`BENCHMARK_RESULT {json}`, as its last word; everything else it prints goes to a log file.
"""
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_MARKER = 'BENCHMARK_RESULT '


class ChildFailed(RuntimeError):
  """A child that failed or ran out of time; `reason` says which in a few words."""

  def __init__(self, message, reason='failed'):
    super().__init__(message)
    self.reason = reason


def run_child(module, args, log_path, timeout_s=3600, env=None):
  """Runs `python -m module *args` from the repository root, with `env` added to the
  environment; returns its result dict.

  The result gains `spawned_at`: the wall-clock time just before the process was started,
  so a child's own `time.time()` marks give times since process start.
  """
  env = dict(os.environ,
             **(env or {}),
             TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=os.pathsep.join(filter(None,
                                               [REPO_ROOT, os.environ.get('PYTHONPATH')])))
  with open(log_path, 'w') as log:
    log.write(f'# python -m {module} {" ".join(args)}\n')
    log.flush()
    spawned_at = time.time()
    try:
      proc = subprocess.run([sys.executable, '-m', module, *args],
                            cwd=REPO_ROOT,
                            env=env,
                            stdout=subprocess.PIPE,
                            stderr=log,
                            text=True,
                            timeout=timeout_s,
                            check=False)
    except subprocess.TimeoutExpired as e:
      log.write(
          e.stdout.decode(errors='replace') if isinstance(e.stdout, bytes) else e.stdout or '')
      raise ChildFailed(
          f'{_what(module, args)} ran past its {timeout_s:.0f} s and was stopped; '
          f'log {log_path}', f'stopped after {timeout_s:.0f} s') from None
    log.write(proc.stdout)
  lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARKER)]
  if proc.returncode != 0 or not lines:
    with open(log_path) as f:
      tail = ''.join(f.readlines()[-25:])
    raise ChildFailed(
        f'{_what(module, args)} failed (exit {proc.returncode}); '
        f'log {log_path}:\n{tail}', f'failed, exit {proc.returncode}')
  result = json.loads(lines[-1][len(RESULT_MARKER):])
  result['spawned_at'] = spawned_at
  return result


class Children:
  """Runs the cases one after another, saying what runs and how long it took; logs go to one
  folder.

  With a deadline (time.monotonic()), a case starts only if its expected seconds still fit
  and is stopped when the time is up. With `keep_going`, a case that fails, runs out of
  time or does not fit gives {'missing': why} instead of ending the suite, so the other
  rows are still measured (the GPU check has one try on a borrowed machine).
  """

  def __init__(self, log_dir, total, deadline=None, keep_going=False):
    self.log_dir = log_dir
    self.total = total
    self.done = 0
    self.deadline = deadline
    self.keep_going = keep_going
    self.elapsed_s = {}  # what each case measured -> its seconds

  def run(self, what, case, params, module='benchmarks.cases', env=None, expected_s=None):
    self.done += 1
    progress = f'[{self.done}/{self.total}] {what}'
    name = f'{self.done:02d}_{case}'
    args = [case, json.dumps(params)] if module == 'benchmarks.cases' else [json.dumps(params)]
    timeout_s = 3600.0
    if self.deadline is not None:
      timeout_s = self.deadline - time.monotonic()
      if timeout_s < (expected_s or 1):
        why = (f'skipped: {max(timeout_s, 0):.0f} s left of the budget, '
               f'{expected_s or 0:.0f} s expected')
        print(f'{progress}: {why}', file=sys.stderr, flush=True)
        return self._missing(why)
    budget = f', about {expected_s:.0f} s expected' if expected_s and self.deadline else ''
    print(f'{progress} ...{budget}', file=sys.stderr, flush=True)
    start = time.monotonic()
    try:
      result = run_child(module, args, os.path.join(self.log_dir, name + '.log'), timeout_s, env)
    except ChildFailed as e:
      if not self.keep_going:
        raise
      print(f'{progress}: failed after {time.monotonic() - start:.0f} s: {e}',
            file=sys.stderr,
            flush=True)
      return self._missing(f'{e.reason} (log {name}.log)')
    finally:
      self.elapsed_s[what] = round(time.monotonic() - start, 1)
    print(f'{progress}: {self.elapsed_s[what]:.0f} s', file=sys.stderr, flush=True)
    return result

  def _missing(self, why):
    if not self.keep_going:
      raise ChildFailed(why)
    return {'missing': why}


def _what(module, args):
  """The module and the case, without the parameters (the log's first line has them)."""
  return f'{module} {args[0]}' if module == 'benchmarks.cases' and args else module


def emit(result):
  """The child's side: prints the result line that `run_child` reads."""
  print(RESULT_MARKER + json.dumps(result), flush=True)


def peak_rss_bytes():
  """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes():
  """This process's resident memory now (Linux)."""
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


class MemoryByPhase:
  """The peak resident memory of each phase of a job, sampled by a thread every few ms.

  A phase lasts from `enter(name)` to the next `enter` of a new phase; `peaks()` lists them
  in order.
  Samples can miss a spike shorter than the interval; `peak_rss_bytes` cannot.
  """

  def __init__(self, interval_s=0.01):
    self.interval_s = interval_s
    self.phase = 'start'
    self._peaks = {}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()

  def enter(self, phase):
    """Starts `phase`; a phase already seen is not entered again (phases only advance)."""
    if phase in self._peaks:
      return
    self._record()
    self.phase = phase
    self._record()

  def peaks(self):
    self._stop.set()
    self._thread.join()
    self._record()
    return dict(self._peaks)

  def _record(self):
    phase = self.phase
    self._peaks[phase] = max(self._peaks.get(phase, 0), rss_bytes())

  def _sample(self):
    while not self._stop.wait(self.interval_s):
      self._record()


def images_per_second(chunks, batch_size, skip_steps):
  """Throughput over epochs, each a list of (step index, perf_counter at the step's end).

  In each epoch, executions before step `skip_steps` (tracing, warm-up) are left out. The
  rate is the median over all executions kept, robust to another process taking the
  cores for a moment; an execution may hold several steps (`steps_per_execution`).
  """
  rates = []
  for marks in chunks:
    kept = [(s, t) for s, t in marks if s >= skip_steps - 1]
    rates += [
        (s1 - s0) * batch_size / (t1 - t0) for (s0, t0), (s1, t1) in zip(kept, kept[1:]) if t1 > t0
    ]
  if not rates:
    raise ValueError(f'no timed steps after the first {skip_steps}; raise the step counts')
  return statistics.median(rates)


def gib(num_bytes):
  return num_bytes / 2**30


def machine_description():
  """CPU model and cores, Python; the TensorFlow version comes from a child."""
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else cpu
  except OSError:
    pass
  return {
      'cpu': cpu,
      'cores': os.cpu_count(),
      'python': platform.python_version(),
      'date': datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')
  }
