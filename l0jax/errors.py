"""The exceptions that end a command without a traceback, and the telling of a failure in one line.

`UserError` means "the user asked for something we cannot do" (a data set's
`DataError` and a network's `GraphError` are ones): `cli.one_line_errors`
turns it into a single `error:` line on stderr and exit status 2, and so it
does with a write the system refused (`os_failure` finds one in what a library
raised); anything else is a bug and keeps its traceback. `Stopped` is a run
that stopped at a signal, which exits with that signal's status. `one_line`
shortens what a library raised to one line of such a message.
"""

import errno
import os
import re


class UserError(Exception):
  """Bad input: a config value, a path, a dataset, a workdir. The message is the whole story."""


class GraphError(UserError):
  """A channel graph that contradicts itself or the module it describes; names the node."""


class Stopped(Exception):
  """A run that stopped when asked to (SIGTERM, SIGINT), its newest checkpoint complete."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


# Errors that mean "the disk or its permissions", when a library reports them
# in a message instead of raising OSError: TensorStore (Orbax's writer) adds
# os_error_code=N, TensorFlow (TensorBoard events) only the text.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                 errno.EIO)
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_PATH = re.compile(r"""(?:^|[\s"'])(/[^\s"';:]+)""")


def _absolute(filename: str | bytes | int) -> str:
  """A relative name means nothing to whoever reads the line elsewhere (a descriptor stays)."""
  return os.path.abspath(os.fsdecode(filename)) if isinstance(filename, (str, bytes)) else str(
      filename)


def os_failure(e: BaseException) -> str | None:
  """What the operating system refused (no space, read-only, permission), in one line.

  Found in `e` or in the exceptions that caused it; None if none of them is
  an OS error, which makes `e` a bug.
  """
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.strerror:
      return e.strerror + (f" ({_absolute(e.filename)})" if e.filename else "")
    message = str(e)
    code = _OS_ERROR_CODE.search(message)
    reasons = ([os.strerror(int(code.group(1)))] if code else
               [os.strerror(n) for n in _WRITE_ERRNOS if os.strerror(n) in message])
    if reasons:
      path = _PATH.search(message)
      return reasons[0] + (f" ({path.group(1)})" if path else "")
    e = e.__cause__ or e.__context__
  return None


def one_line(e: BaseException, limit: int = 200) -> str:
  """What a library raised, in one line: Orbax, TensorStore and TFDS messages run to pages."""
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0][:limit] if lines else ''}"
