"""The one exception type that means "the user asked for something we cannot do".

`main.py` turns a `UserError` into a single line on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """Bad input: a config value, a path, a dataset, a workdir. The message is the whole story."""
