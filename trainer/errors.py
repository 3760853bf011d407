"""The one exception type that the command-line entry points turn into a single line."""


class UserError(Exception):
  """A problem with the user's input; the message names it and the fix."""
