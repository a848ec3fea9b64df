"""A run of several processes (`--multihost`): joining them, and its end when one is gone.

JAX's coordination service ends every process of a run when one dies (or
never joins) by aborting it from a native thread: a page of native log, a
stack, `Fatal Python error: Aborted`, exit status 134. No Python code runs
first (the hook for it, `missed_heartbeat_callback`, cannot be called from
Python in jaxlib 0.12.1), so main.py runs each process as a child of a small
supervisor (`supervise`) that loads no JAX. The child's native log (its file
descriptor 2) goes to the supervisor, and so do the errors libraries log from
their threads; its own Python output (sys.stderr, the console) does not. When the child ends because a peer is gone, the
supervisor prints one line naming which and what the run resumes from, and
exits with PEER_GONE, or NEVER_JOINED when the peers did not all join in time.
"""

import collections
import contextlib
import logging as py_logging
import os
import re
import signal
import subprocess
import sys
import threading
from typing import Iterator, NoReturn

from absl import logging

from l0jax import cli

# Exit statuses, as sysexits.h has them: try again later; a service is unavailable.
PEER_GONE, NEVER_JOINED = 75, 69
DEFAULT_PEER_TIMEOUT = 120  # seconds the processes wait for each other to join
# In the child: the file descriptor of the pipe to its supervisor, which becomes its native log.
_NATIVE_LOG_FD = "L0JAX_NATIVE_LOG_FD"
# How the native log, or an exception in the child, says that a peer is gone or never came.
_FATAL = "JAX distributed service detected fatal errors"
_NEVER_JOINED = "RegisterTask"  # the call that timed out, waiting for the others to join
_UNHEALTHY = re.compile(r"unhealthy \(stopped sending heartbeats\):\s*((?:\d+\s*)+)")
_COORDINATOR_GONE = re.compile(r"PollForError|leader task|Failed to send RPC to coordination")
_PEER_ERROR = re.compile(r"Gloo \w+ failed|by peer|[Bb]arrier|coordination service")


def is_child() -> bool:
  """Whether this process is the child of a `supervise`, which does the run's work."""
  return _NATIVE_LOG_FD in os.environ


def supervise(argv: list[str], workdir: str | None, process_id: int | None,
              num_processes: int | None, debug: bool) -> NoReturn:
  """Runs `argv` (this command) as a child and ends as it ends; one line if a peer was lost.

  `workdir` names the checkpoint a training run resumes from (None: not
  training). The native log is shown as it comes with `debug`, else only
  after a crash of the child's own. SIGTERM or SIGINT ends the child at once,
  as does the supervisor's own end, and the supervisor then ends by that signal.
  """
  read_end, write_end = os.pipe()
  child = subprocess.Popen([sys.executable, *argv],
                           env={**os.environ, _NATIVE_LOG_FD: str(write_end)},
                           pass_fds=(write_end,), start_new_session=True,
                           preexec_fn=lambda: cli.die_with_parent(signal.SIGKILL))
  os.close(write_end)
  native = collections.deque(maxlen=400)
  reader = threading.Thread(target=_read_native_log, args=(read_end, native, debug), daemon=True)
  reader.start()
  received = []

  def stop(signum, frame):  # pylint: disable=unused-argument
    received.append(signum)
    child.kill()  # JAX's preemption notice takes SIGTERM; the others would wait at a collective.

  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, stop)
  status = child.wait()
  reader.join(timeout=10)  # The rest of its native log, unless something it started holds it.
  if received:
    _end_by_signal(received[0])
  log = "".join(native)
  who = f"process {'?' if process_id is None else process_id} of the run"
  if status == -signal.SIGABRT and _FATAL in log and _NEVER_JOINED in log:
    cli.fail(f"{who}: not every process joined in time (is each one started, with the same "
             "--coordinator_address and --num_processes? --peer_timeout sets how long they wait "
             "for each other); nothing was written", NEVER_JOINED)
  if status == PEER_GONE or (status == -signal.SIGABRT and _FATAL in log):
    cli.fail(f"{who}: {_gone(log, process_id, num_processes)} is gone, so this one stopped too; "
             f"{_resumes(workdir)}", PEER_GONE)
  if status < 0 and not debug:
    sys.stderr.write(log)  # A crash of the child's own: its native log says why.
  if status < 0:
    _end_by_signal(-status)
  sys.exit(status)


def _read_native_log(fd: int, lines: collections.deque, debug: bool) -> None:
  with open(fd, errors="replace") as log:
    for line in log:
      lines.append(line)
      if debug:
        sys.stderr.write(line)


def _end_by_signal(signum: int) -> NoReturn:
  """Ends this process by `signum`, as the child ended: its status is the signal's."""
  sys.stderr.flush()
  signal.signal(signum, signal.SIG_DFL)
  os.kill(os.getpid(), signum)
  sys.exit(128 + signum)  # If the signal did not end it (it is blocked).


def _gone(log: str, process_id: int | None, num_processes: int | None) -> str:
  """Which process the native log says is gone."""
  unhealthy = _UNHEALTHY.search(log)
  if unhealthy:
    return "process " + ", ".join(unhealthy.group(1).split())
  if process_id != 0 and _COORDINATOR_GONE.search(log):
    return "process 0, which coordinates the run,"
  if num_processes == 2 and process_id is not None:
    return f"process {1 - process_id}"
  return "another process"


def _resumes(workdir: str | None) -> str:
  """What the same commands, run again on every process, start from."""
  if workdir is None:
    return "run the same command on every process again"
  folder = os.path.join(workdir, "checkpoints")  # workdirs.CHECKPOINTS_DIR, without loading JAX
  steps = [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
  where = (f"from its newest complete checkpoint, step {max(steps)}," if steps
           else "from the start (no checkpoint was complete),")
  return f"the run resumes {where} when every process runs the same command again"


def native_log_to_supervisor() -> None:
  """In the child, before JAX loads: file descriptor 2 (native logs, fatal errors) goes to the
  supervisor; Python's sys.stderr, and absl's log with it, stays on the console, but for the
  errors libraries log (`LibraryErrorsToNativeLog`)."""
  console = os.fdopen(os.dup(2), "w", buffering=1)
  os.dup2(int(os.environ.pop(_NATIVE_LOG_FD)), 2)
  sys.stderr = console
  handler = logging.get_absl_handler()
  handler.python_handler.stream = console
  handler.addFilter(LibraryErrorsToNativeLog(handler))


class LibraryErrorsToNativeLog(py_logging.Filter):
  """In the child, for absl's handler: a library's error goes to the native log, not the console.

  Orbax's background thread logs one when a peer leaves while a checkpoint is
  being finalized; the supervisor then says in one line which peer is gone.
  When the child fails on its own, its one `error:` line says why (the native
  log too, if it crashed), and --debug shows the native log as it comes.
  """

  def __init__(self, handler: py_logging.Handler):
    super().__init__()
    self._handler = handler

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno < py_logging.ERROR or not cli.from_a_library(record):
      return True
    os.write(2, (self._handler.format(record) + "\n").encode(errors="replace"))
    return False


@contextlib.contextmanager
def peer_errors(debug: bool) -> Iterator[None]:
  """In the child: an exception that says a peer is gone (a collective or barrier that failed)
  ends this process at once with PEER_GONE, its first line in the native log, before JAX's
  coordination service aborts it. At once: Python's exit would wait for the peers to exit."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  # Re-raised unless a peer is gone.
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    if debug or not _PEER_ERROR.search(str(e)):
      raise
    os.write(2, f"l0jax: {type(e).__name__}: {message}\n".encode())
    os._exit(PEER_GONE)  # pylint: disable=protected-access


def join(coordinator_address: str | None, num_processes: int | None, process_id: int | None,
         timeout: int) -> None:
  """jax.distributed.initialize with the values that are set; JAX finds the others or says why.

  Processes that do not all join within `timeout` seconds end (NEVER_JOINED).
  On CPU the processes exchange arrays through gloo, JAX's default there.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  from l0jax.errors import UserError  # pylint: disable=import-outside-toplevel
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=timeout)
  except ValueError as e:  # "coordinator_address should be defined.", a process_id too large
    raise UserError(f"--multihost: {e} Set --coordinator_address, --num_processes and "
                    "--process_id (or run under a cluster JAX detects, such as Slurm)") from e
  # gloo gives the processes 30 s to meet at their first collective, and one
  # can compile for longer while another reads the compilation cache. So they
  # meet at a barrier of JAX's coordination service first (minutes), then start
  # gloo together; later collectives wait as long as they must.
  ocp.multihost.sync_global_processes("l0jax: joined", processes=set(range(jax.process_count())))
  multihost_utils.sync_global_devices("l0jax: collectives started")
