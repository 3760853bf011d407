"""Runs an absl entry point so that every bad input ends in one line: `error: <problem>; <fix>`."""
import sys

from absl import app, flags

from trainer.errors import UserError


def run(main):
  """Like absl's app.run, but flag errors and UserErrors print one line and exit non-zero."""
  def parse_flags(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      sys.exit(f'error: {e}')

  def main_with_clear_errors(argv):
    try:
      main(argv)
    except UserError as e:
      sys.exit(f'error: {e}')

  app.run(main_with_clear_errors, flags_parser=parse_flags)
