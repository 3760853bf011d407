"""Runs an absl entry point so that every bad input ends in one line: `error: <problem>; <fix>`."""
import logging as python_logging
import sys

from absl import app, flags, logging

from trainer.errors import UserError


def run(main):
  """Like absl's app.run, but flag errors and UserErrors print one line and exit non-zero."""
  def parse_flags(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      sys.exit(f'error: {e}')

  def main_with_clear_errors(argv):
    quiet_library_logs()
    try:
      main(argv)
    except UserError as e:
      sys.exit(f'error: {e}')

  app.run(main_with_clear_errors, flags_parser=parse_flags)


def quiet_library_logs():
  """TensorFlow logs every checkpoint write at INFO; the commands print their own progress.

  --verbosity=0 brings the INFO logs back.
  """
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
    python_logging.getLogger('tensorflow').setLevel(python_logging.WARNING)


def run_on_run_dir(action, verb: str):
  """The entry point of a command that works on one run folder: `--run_dir=runs/NAME`.

  The flag is defined here, when the command starts, not at import: trainer.main
  defines its own --run_dir, and tests import both modules into one process.
  """
  flags.DEFINE_string('run_dir', None, f'The run folder to {verb}, e.g. runs/NAME.')
  flags.mark_flag_as_required('run_dir')

  def main(argv):
    if len(argv) > 1:
      raise UserError(f'unexpected arguments {argv[1:]}; give the run folder as '
                      '--run_dir=runs/NAME')
    action(flags.FLAGS.run_dir)

  run(main)
