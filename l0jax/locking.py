"""One process at a time in a workdir (or a sweep directory).

The lock is `fcntl.flock` on DIR/lock. The kernel releases it when its holder
exits, however it exits (kill -9 included), so a killed run's lock blocks
nothing; the PID written into the file only names the holder in messages.
"""

import contextlib
import fcntl
import os
import time
from typing import Iterator

from l0jax.errors import UserError

LOCK_FILE = "lock"
# A reader (see `holder`) holds the lock for microseconds; a writer tries a few
# times before refusing, so that it is never refused because of one.
_ATTEMPTS, _RETRY_S = 3, 0.05


def _missing_folders(directory: str) -> list[str]:
  """`directory` and those of its parents that do not exist yet, deepest first."""
  missing = []
  path = os.path.abspath(directory)
  while not os.path.lexists(path):
    missing.append(path)
    path = os.path.dirname(path)
  return missing


def _try_lock(fd: int, operation: int) -> bool:
  for attempt in range(_ATTEMPTS):
    try:
      fcntl.flock(fd, operation | fcntl.LOCK_NB)
      return True
    except BlockingIOError:
      if attempt + 1 < _ATTEMPTS:
        time.sleep(_RETRY_S)
  return False


def _pid_in(fd: int) -> str:
  pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
  return f"process {pid}" if pid.isdigit() else "another process"


def _lock(directory: str, flag: str) -> int:
  """An open descriptor of DIR/lock, locked by this process; refuses if another holds it."""
  if os.path.lexists(directory) and not os.path.isdir(directory):
    raise UserError(f"{flag}={directory} is a file, not a folder")
  path = os.path.join(directory, LOCK_FILE)
  try:
    while True:
      os.makedirs(directory, exist_ok=True)
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
      if not _try_lock(fd, fcntl.LOCK_EX):
        holder = _pid_in(fd)
        os.close(fd)
        raise UserError(f"{flag}={directory} is in use by {holder}, which holds {path}; "
                        "wait for it to finish, or stop it")
      # The file may have been removed (see `exclusive_folder`) between our open and our lock.
      if os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path)):
        break
      os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
  except OSError as e:
    raise UserError(f"cannot write in {flag}={directory}: {e.strerror} ({e.filename})") from e
  return fd


@contextlib.contextmanager
def exclusive_folder(directory: str, flag: str) -> Iterator[None]:
  """`directory` (created if missing) as this process's alone while the block runs.

  A second process is refused in one line naming the holder's PID. Afterwards
  the lock file is removed, and so are the folders created for the block if
  it left them empty: a refused run leaves no trace.
  """
  created = _missing_folders(directory)
  fd = _lock(directory, flag)
  try:
    yield
  finally:
    with contextlib.suppress(OSError):
      os.unlink(os.path.join(directory, LOCK_FILE))  # While still locked: see `_lock`.
      for folder in created:
        os.rmdir(folder)  # Only if empty.
    os.close(fd)


def holder(directory: str) -> str | None:
  """"process PID" if a process holds `directory`'s lock now, else None. Writes nothing."""
  try:
    fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDONLY)
  except OSError:
    return None
  try:
    with contextlib.suppress(BlockingIOError):
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
      return None
    return _pid_in(fd)
  finally:
    os.close(fd)
