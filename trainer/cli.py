"""What every command shares: its environment, its flags and how it ends.

Every command (trainer.main, evaluate, export, predict, prepare_data, fetch_weights)
imports this module first, defines its flags with `define_flags` and runs with `run`,
so each bad input ends in one line, `error: <problem>; <fix>`, never a traceback.
"""
import dataclasses
import logging as python_logging
import math
import os
import signal
import sys
import typing
from typing import Any, Callable, Iterable, List, Optional, Type

# Set before TensorFlow loads, which the commands' other imports do.
# TensorFlow's C++ start-up chatter (CUDA probes, oneDNN notes) buries the training log.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
if 'TF_CONFIG' in os.environ:
  # oneDNN's graph rewrites broke multi-worker CPU training on real data here (a fused
  # BatchNorm fed the 3-channel input: "scale must have the same number of elements as
  # the channels of x, got 64 and 3"); with them off it trains. oneDNN is CPU-only, so
  # GPU workers lose nothing.
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from absl import app, flags, logging  # noqa: E402

from trainer.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS

# ---- Flags from dataclass fields


def define_flags(config_class: Type[Any],
                 command: str,
                 names: Optional[Iterable[str]] = None) -> None:
  """Defines a flag for each field of `config_class` (nested dataclasses flattened), or for
  `names` only, as key flags of module `command` (its `--helpshort`). A flag defined
  already (two commands in one process) is not defined again."""
  # absl files a script's own flags under its path, not under '__main__'.
  command = sys.argv[0] if command == '__main__' else command
  for field, kind in _flag_fields(config_class):
    if names is None or field.name in names:
      if field.name not in FLAGS:
        _define(field, kind)
      FLAGS.register_key_flag_for_module(command, FLAGS[field.name])


def flag_names(config_class: Type[Any]) -> List[str]:
  """The flags that set `config_class`, nested dataclasses flattened."""
  return [field.name for field, _ in _flag_fields(config_class)]


def _flag_fields(config_class):
  """(field, type) for each setting, nested dataclasses flattened."""
  types = typing.get_type_hints(config_class)
  for field in dataclasses.fields(config_class):
    if dataclasses.is_dataclass(field.default):
      yield from _flag_fields(type(field.default))
    else:
      yield field, types[field.name]


def _define(field, kind):
  meta, default = field.metadata, field.default
  if meta['choices']:
    flags.DEFINE_enum(field.name, default, meta['choices'], meta['help'])
  elif kind is bool:
    flags.DEFINE_bool(field.name, default, meta['help'])
  elif kind is int:
    flags.DEFINE_integer(field.name,
                         default,
                         meta['help'],
                         lower_bound=meta['lower'],
                         upper_bound=meta['upper'])
  elif kind is float:
    flags.DEFINE_float(field.name,
                       default,
                       meta['help'],
                       lower_bound=meta['lower'],
                       upper_bound=meta['upper'])
    # Bounds let NaN through (every comparison with it is false), and inf has no use.
    flags.register_validator(field.name,
                             math.isfinite,
                             message=f'--{field.name} must be a finite number')
  else:  # str and Optional[str]
    flags.DEFINE_string(field.name, default, meta['help'])


def config_from_flags(config_class: Type[Any], **overrides: Any) -> Any:
  """An instance of `config_class` from the parsed flags (nested dataclasses too)."""
  values = {}
  for field in dataclasses.fields(config_class):
    if dataclasses.is_dataclass(field.default):
      values[field.name] = config_from_flags(type(field.default))
    else:
      values[field.name] = FLAGS[field.name].value
  return config_class(**{**values, **overrides})


def required_flag(name: str) -> Any:
  """The value of flag `name`, which this command needs although other commands do not."""
  if not FLAGS[name].value:
    raise UserError(f'--{name} is required: {FLAGS[name].help}')
  return FLAGS[name].value


# ---- Running a command


def run(main: Callable[[list], None],
        *,
        takes_arguments: bool = False,
        on_interrupt: str = 'stopped') -> None:
  """Like absl's app.run, but flag errors, UserErrors, Ctrl-C and SIGTERM end in one line.

  `main` gets the positional arguments if `takes_arguments`; otherwise any is refused.
  `on_interrupt` says what a stopped command means to the user (e.g. how to resume).
  """

  def parse_flags(argv: List[str]) -> List[str]:
    try:
      return FLAGS(argv)
    except flags.Error as e:
      sys.exit(f'error: {_one_line(e)}')

  def main_with_clear_errors(argv: List[str]) -> None:
    quiet_library_logs()
    # SIGTERM (a scheduler's stop, `kill`) ends the command like Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    if len(argv) > 1 and not takes_arguments:
      sys.exit(f'error: unexpected arguments {argv[1:]}; every setting is a --flag (see --help)')
    try:
      main(argv[1:] if takes_arguments else [])
    except UserError as e:
      _quiet_exit(f'error: {e}')
    except KeyboardInterrupt:
      _quiet_exit(f'error: interrupted; {on_interrupt}')

  app.run(main_with_clear_errors, flags_parser=parse_flags)


def _quiet_exit(last_line: str) -> None:
  """Exits with `last_line` as the last thing the user reads.

  TensorFlow warns as the objects of a failed or interrupted command are collected at exit
  (a checkpoint that did not load warns once per value it holds, over a thousand lines).
  """
  python_logging.getLogger('tensorflow').setLevel(python_logging.ERROR)
  sys.exit(last_line)


def _raise_keyboard_interrupt(signum, frame):
  raise KeyboardInterrupt


def _one_line(error: Exception) -> str:
  """absl's messages for a missing flagfile start with 'ERROR:: '; one plain line reads better."""
  text = ' '.join(str(error).split())
  if 'Unable to open flagfile' in text:
    return f'{text.replace("ERROR:: ", "")}; check the path given to --flagfile'
  return text


def quiet_library_logs() -> None:
  """TensorFlow logs every checkpoint write at INFO; the commands log their own progress.

  --verbosity=-1 or lower hides the commands' own INFO lines too.
  """
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.INFO)
  python_logging.getLogger('tensorflow').setLevel(python_logging.WARNING)
