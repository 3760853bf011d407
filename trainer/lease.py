"""A lock file that holds only while its holder lives: the lock of a run folder (trainer/runs.py).

The holder records who it is (host, boot, process namespace, pid and the pid's start time)
and rewrites the file every HEARTBEAT_SECONDS while it runs. A process that finds the file
decides:

  same host, boot and  the holder's process is looked up: gone, or its pid now belongs to a
  process namespace    newer process, means stale.
  anything else        another machine, or another container (a restarted one, which is
                       PID 1 again, or one with a new host name): the file is watched for up
                       to LEASE_SECONDS; a file no heartbeat changed is stale.

The window that remains: a holder alive but frozen for longer than LEASE_SECONDS (a stopped
process, a paused VM, a disk that hangs) loses its lock to a newcomer, and then two
processes write the folder. Local files are created atomically; gs:// files only if absent,
checked just before, which leaves a window of a moment.
"""
import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
from typing import Iterator, Optional

import tensorflow as tf
from absl import logging

HEARTBEAT_SECONDS = 10.0
LEASE_SECONDS = 60.0  # six missed heartbeats
BOOT_ID_FILE = '/proc/sys/kernel/random/boot_id'
PID_NAMESPACE_LINK = '/proc/self/ns/pid'


class Held(Exception):
  """The lock belongs to a live process; the message describes it."""


@dataclasses.dataclass(frozen=True)
class Holder:
  host: str
  boot: str
  namespace: str  # containers on one machine share its host name (--network=host) and boot
  pid: int
  started: int  # the process's start time, in clock ticks since boot (0: unknown)
  beat: int = 0  # heartbeats so far

  def describe(self) -> str:
    return f'{self.host} pid {self.pid}'


def this_process() -> Holder:
  return Holder(socket.gethostname(), boot_id(), pid_namespace(), os.getpid(),
                start_time(os.getpid()))


@contextlib.contextmanager
def held(file_path: str) -> Iterator[None]:
  """Holds the lock file `file_path` for the block, taking over a stale one; raises Held."""
  holder = this_process()
  if not _create_if_absent(file_path, _text(holder)):
    found = _read(file_path)
    if not _stale(file_path, found):
      raise Held(_describe(found))
    with contextlib.suppress(tf.errors.NotFoundError):
      tf.io.gfile.remove(file_path)
    if not _create_if_absent(file_path, _text(holder)):
      raise Held(_describe(_read(file_path)))
  heartbeat = _Heartbeat(file_path, holder)
  heartbeat.start()
  try:
    yield
  finally:
    ours = heartbeat.stop()
    with contextlib.suppress(tf.errors.NotFoundError):
      if _read(file_path) == ours:
        tf.io.gfile.remove(file_path)


class _Heartbeat(threading.Thread):
  """Rewrites the lock with the next beat while it is still ours."""

  def __init__(self, file_path: str, holder: Holder):
    super().__init__(daemon=True, name='lock-heartbeat')
    self.file_path = file_path
    self.text = _text(holder)
    self.holder = holder
    self.stopped = threading.Event()

  def run(self):
    while not self.stopped.wait(HEARTBEAT_SECONDS):
      try:
        if _read(self.file_path) != self.text:
          return  # taken over or removed: never write over another holder's lock
        self.holder = dataclasses.replace(self.holder, beat=self.holder.beat + 1)
        _write(self.file_path, _text(self.holder))
        self.text = _text(self.holder)
      except (tf.errors.OpError, OSError) as e:
        # A disk or network hiccup: the next beat tries again, well inside the lease.
        logging.warning('could not renew the lock %s: %s', self.file_path, e)

  def stop(self) -> str:
    """Stops beating; returns the lock's text as last written."""
    self.stopped.set()
    self.join()
    return self.text


def _stale(file_path: str, text: str) -> bool:
  holder = _parse(text)
  if holder and (holder.host, holder.boot, holder.namespace) == (socket.gethostname(), boot_id(),
                                                                 pid_namespace()):
    return not _running(holder.pid, holder.started)
  logging.info('%s is held by %s; watching it for up to %d s for signs of life', file_path,
               _describe(text), LEASE_SECONDS)
  deadline = time.monotonic() + LEASE_SECONDS
  while time.monotonic() < deadline:
    time.sleep(min(1.0, LEASE_SECONDS))
    try:
      if _read(file_path) != text:
        return False  # a heartbeat: the holder lives
    except tf.errors.NotFoundError:
      return True  # released meanwhile
  return True


def _running(pid: int, started: int) -> bool:
  """Whether process `pid` of this machine runs and is the one that started at `started`."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # another user's process: it exists
  now_started = start_time(pid)
  return not (started and now_started and now_started != started)


def start_time(pid: int) -> int:
  """The process's start time in clock ticks since boot (Linux), 0 where unknown."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      # Field 22; the command name (field 2) may hold spaces, so count from its ')'.
      return int(f.read().rsplit(')', 1)[1].split()[19])
  except (OSError, IndexError, ValueError):
    return 0


def boot_id() -> str:
  try:
    with open(BOOT_ID_FILE) as f:
      return f.read().strip()
  except OSError:
    return ''


def pid_namespace() -> str:
  """This process's PID namespace (Linux): pids mean the same only within one."""
  try:
    return os.readlink(PID_NAMESPACE_LINK)
  except OSError:
    return ''


def _text(holder: Holder) -> str:
  return json.dumps(dataclasses.asdict(holder))


def _parse(text: str) -> Optional[Holder]:
  try:
    return Holder(**json.loads(text))
  except (ValueError, TypeError):
    return None  # damaged, or a lock of an older version: judged by its lease


def _describe(text: str) -> str:
  holder = _parse(text)
  return holder.describe() if holder else (text.strip() or '(unknown)')


def _create_if_absent(file_path: str, text: str) -> bool:
  if '://' not in file_path:
    try:
      fd = os.open(file_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    return True
  if tf.io.gfile.exists(file_path):
    return False
  _write(file_path, text)
  return True


def _read(file_path: str) -> str:
  with tf.io.gfile.GFile(file_path) as f:
    return f.read()


def _write(file_path: str, text: str) -> None:
  if '://' in file_path:
    with tf.io.gfile.GFile(file_path, 'w') as f:
      f.write(text)
    return
  # Replaced whole, so a reader never sees half a heartbeat.
  temporary = f'{file_path}.{os.getpid()}.tmp'
  with open(temporary, 'w') as f:
    f.write(text)
  os.replace(temporary, file_path)
