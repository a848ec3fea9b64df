"""The command lines' plumbing, shared by main.py, the sweep and the quick start.

Bad input (a flag, a --config file or value, a workdir) ends with one line
on stderr, `error: ...`, and exit status 2, and so does a write the system
refuses (a full disk, a read-only folder); anything else is a bug and keeps
its traceback. Libraries' INFO chatter and background tracebacks stay off the
console (`quiet_libraries`). A training run stops at a signal with its checkpoint
written (`StopSignals`).
"""

import contextlib
import ctypes
import logging as py_logging
import os
import pathlib
import signal
import sys
import threading
import traceback
from typing import TYPE_CHECKING, Iterator, NoReturn

from absl import flags, logging

from l0jax.errors import Stopped, UserError, os_failure

if TYPE_CHECKING:
  import ml_collections
  import orbax.checkpoint as ocp

FLAGS = flags.FLAGS
HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def checkout() -> pathlib.Path:
  """The checkout the package was imported from, whose main.py and configs/ the sweep and the
  quick start run. A non-editable install copies only the package, so neither is beside it."""
  repo = pathlib.Path(__file__).resolve().parents[1]
  if not (repo / "main.py").is_file() or not (repo / "configs").is_dir():
    raise UserError(f"no main.py and configs/ beside the l0jax package ({repo}): run this from "
                    "the checkout's root, or install the checkout with `pip install -e .`")
  return repo


def fail(message: str, status: int = 2) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


def die_with_parent(signum: int = signal.SIGTERM) -> None:
  """In a child, before it starts: `signum` when its parent dies, even of SIGKILL (Linux)."""
  if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signum)


def config_file_error(e: OSError) -> str:
  # ml_collections lists every path it tried; the last line says why the file did not load.
  return f"cannot load --config: {str(e).splitlines()[-1].strip()}"


def _config_path(argv: list[str]) -> str | None:
  """The file of --config=PATH[:ARGS] (or --config PATH[:ARGS]) in `argv`, as an absolute path."""
  for i, arg in enumerate(argv):
    value = arg.split("=", 1)[1] if arg.startswith("--config=") else (
        argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
    if value is not None:
      return os.path.abspath(value.split(":", 1)[0])
  return None


def raised_in_config_file(e: BaseException, argv: list[str]) -> str | None:
  """"FILE, line N: what it raised" if the --config file itself raised `e` (or what caused it).

  ml_collections and absl re-raise what the file raised as other exceptions;
  the file's own error is found along the chain of causes.
  """
  path = _config_path(argv)
  seen = set()
  while path and e is not None and id(e) not in seen:
    seen.add(id(e))
    lines = [frame.lineno for frame in traceback.extract_tb(e.__traceback__)
             if os.path.abspath(frame.filename) == path]
    if isinstance(e, SyntaxError) and e.filename and os.path.abspath(e.filename) == path:
      lines.append(e.lineno)
    if lines:
      what = (str(e).splitlines() or [""])[0]
      return f"{path}, line {lines[-1]}: {type(e).__name__}: {what}"
    e = e.__cause__ or e.__context__
  return None


def _flag_error(e: Exception) -> str:
  if isinstance(e, flags.Error):
    return str(e).splitlines()[0]
  if isinstance(e, OSError):
    return config_file_error(e)
  # --config.KEY for a KEY that the config lacks: ml_collections raises
  # AttributeError(KeyError("'KEY'\nDid you mean ...")).
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  name, *hint = str(e.args[0] if e.args else e).splitlines()
  return f"the config has no field {name}" + (f" ({' '.join(hint)})" if hint else "")


def parse_flags(argv: list[str], known_only: bool = False) -> list[str]:
  """absl's parser, with flag errors (an unknown config key, a wrong type) as one line.

  `known_only`: flags it does not know are returned with the arguments (the
  sweep hands them to its members).
  """
  try:
    return FLAGS(argv, known_only=known_only)
  except SystemExit:
    if any(arg in HELP_FLAGS for arg in argv[1:]):
      sys.exit(0)  # absl exits with 1 after printing the help that was asked for.
    raise
  except Exception as e:  # pylint: disable=broad-except  # The --config file may raise anything.
    message = None if "--debug" in argv else _bad_flags(e, argv)
    if message is None:
      raise
    fail(message)


def _bad_flags(e: Exception, argv: list[str]) -> str | None:
  """What was wrong with the flags or the --config file in `argv`; None if `e` is a bug."""
  in_config_file = raised_in_config_file(e, argv)
  if in_config_file:
    return in_config_file
  if not isinstance(e, (flags.Error, OSError, AttributeError, KeyError)):
    return None
  return _flag_error(e)


def command_config(argv: list[str]) -> "ml_collections.ConfigDict":
  """The config that the main.py command line `argv` would train with (its --config file and
  --config.KEY=VALUE overrides; other flags are ignored), checked as main.py checks it."""
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)  # Its overrides, not this process's.
  try:
    values(argv, known_only=True)
  except Exception as e:  # pylint: disable=broad-except  # The --config file may raise anything.
    message = _bad_flags(e, argv)
    if message is None:
      raise
    raise UserError(message) from e
  return checked_config(values.config, argv)


# What logs as l0jax itself: the package's files and the checkout's main.py. Anything else is a
# library's, Python's warnings (`warnings.warn`, which `quiet_libraries` logs) included.
_OURS = (os.path.dirname(os.path.abspath(__file__)) + os.sep,
         os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "main.py"))


def from_a_library(record: py_logging.LogRecord) -> bool:
  """Whether a library logged `record`, not l0jax itself."""
  return not record.pathname.startswith(_OURS)


class QuietLibraries(py_logging.Filter):
  """For absl's handler: libraries' INFO chatter stays off the console (Orbax on every
  checkpoint, JAX probing for backends), and so do their warnings (unless `tracebacks`), which
  would print above the one `error:` line of a run that then fails, or between its progress
  lines: deprecations and notes meant for the program's authors, not its users.

  The errors that Orbax's, tensorboardX's and asyncio's background threads log
  when a write fails keep their first line but not their pages of traceback
  (unless `tracebacks`): the failure reaches the main thread, which reports it
  in one line. asyncio's "Future exception was never retrieved" is dropped
  (unless `tracebacks`): it is the garbage collector finding a sibling read of
  a failure already reported, at any time, even after the `error:` line that
  must end the output.
  """

  def __init__(self, tracebacks: bool = False):
    super().__init__()
    self._tracebacks = tracebacks

  def filter(self, record: py_logging.LogRecord) -> bool:
    if from_a_library(record) and record.levelno == py_logging.WARNING and not self._tracebacks:
      return False
    library = next((lib for lib in ("orbax", "jax", "tensorboardX", "asyncio")
                    if f"/{lib}/" in record.pathname), None)
    if library in ("orbax", "jax") and record.levelno < py_logging.WARNING:
      return False
    if (library == "asyncio" and not self._tracebacks
        and record.getMessage().startswith("Future exception was never retrieved")):
      return False
    if library not in (None, "jax") and record.levelno >= py_logging.ERROR and not self._tracebacks:
      first_line = (record.getMessage().splitlines() or [""])[0]
      record.msg, record.args = f"{first_line[:300]} (traceback left out)", None
      record.exc_info = record.exc_text = None
    return True


def _quiet_unraisable(unraisable) -> None:
  """sys.unraisablehook: one debug line instead of a traceback.

  TensorStore reports this way what its callbacks raise into Orbax's closed
  event loop after a write failed: pages of "Event loop is closed" before the
  one line that reports the failure.
  """
  logging.debug("Ignored: %s: %s", unraisable.exc_type.__name__, unraisable.exc_value)


def quiet_libraries(debug: bool = False) -> None:
  """Libraries' INFO lines, warnings and background tracebacks off the console, unless `debug`."""
  py_logging.captureWarnings(True)  # Python's warnings through absl's handler, and its filter.
  logging.get_absl_handler().addFilter(QuietLibraries(tracebacks=debug))
  if not debug:
    sys.unraisablehook = _quiet_unraisable


@contextlib.contextmanager
def one_line_errors(what: str, kept: str, *, debug: bool = False) -> Iterator[None]:
  """A UserError, or a write the system refused, as one `error:` line and exit status 2; a run
  stopped by a signal (`Stopped`) as one `stopped:` line and the status that signal would give.

  `what` names what stopped ("--mode=train"), `kept` what of it survives a
  refused write, to be run again. `debug` lets every exception through.
  """
  try:
    yield
  except Stopped as e:
    if debug:
      raise
    logging.flush()
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(128 + e.signum)  # What the shell reports for a process the signal ended.
  except UserError as e:
    if debug:
      raise
    logging.flush()
    # The error line ends the output: what libraries log while the interpreter exits (their
    # background work's errors, about the failure just reported) would follow it.
    logging.get_absl_handler().setLevel(py_logging.CRITICAL + 1)
    fail(str(e))
  except Exception as e:  # pylint: disable=broad-except  # Only an OS failure is not a bug.
    reason = os_failure(e)
    if debug or reason is None:
      raise
    logging.flush()
    print(f"error: {what} stopped, as the system refused a write: {reason}. {kept}",
          file=sys.stderr, flush=True)
    # Not sys.exit: at exit, TensorBoard's and Orbax's writers would try the failed writes again,
    # and print pages of tracebacks after this line.
    os._exit(2)  # pylint: disable=protected-access


def checked_config(config: "ml_collections.ConfigDict | None",
                   argv: list[str]) -> "ml_collections.ConfigDict":
  """The --config file's config with its overrides, its values checked before JAX loads.

  `config` is the flag's value (None: no --config given), `argv` the command line.
  """
  from l0jax import run_config  # pylint: disable=import-outside-toplevel
  if config is None:
    raise UserError("--mode=train needs --config=configs/SOMETHING.py")
  try:
    run_config.validate(config)
  except OSError as e:  # ml_collections reports an OSError of the config file at its first use.
    raise UserError(raised_in_config_file(e, argv) or config_file_error(e)) from e
  return config


# Where main.py keeps compiled programs unless told otherwise, and how much of them: beyond it,
# JAX deletes the least recently used.
COMPILATION_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                 "l0jax", "jax")
COMPILATION_CACHE_BYTES = 2 * 2**30


def use_compilation_cache(folder: str | None) -> None:
  """JAX's persistent compilation cache in `folder`, so that a run of a network compiled before
  (a resume, --mode=test, a sweep's next member) loads its steps instead of compiling them.

  None: $JAX_COMPILATION_CACHE_DIR, which JAX reads itself, else COMPILATION_CACHE
  (at most COMPILATION_CACHE_BYTES); "": no cache.
  """
  import jax  # pylint: disable=import-outside-toplevel
  if folder is None and "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return
  if folder is None:
    folder = COMPILATION_CACHE
    jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_BYTES)
  jax.config.update("jax_compilation_cache_dir", folder or None)


class StopSignals:
  """SIGTERM or SIGINT while training: stop at the next step or epoch end, its save complete.

  Unhandled, either ends the process at once, and a checkpoint still being
  written (saves are asynchronous) is lost with the epoch it holds. Handled in
  the main thread only, where Python runs signal handlers; a second signal
  acts as if this were not there (SIGINT raises KeyboardInterrupt, SIGTERM
  kills). Not in a run of several processes: each would stop at the step its
  own signal came, and the others would wait at the next collective forever.
  """

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def __enter__(self) -> "StopSignals":
    import jax  # pylint: disable=import-outside-toplevel
    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def __exit__(self, *exc_info) -> None:
    self._restore()

  def _restore(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum: int, frame) -> None:  # pylint: disable=unused-argument
    self.received = signum
    self._restore()
    logging.warning("Signal %d: stopping after the current training call, once the newest "
                    "checkpoint is written (the same signal again stops at once).", signum)

  def stop_if_received(self, mngr: "ocp.CheckpointManager", step: int) -> None:
    """Raises `Stopped` if a signal came, once every save in flight is complete."""
    if self.received is None:
      return
    mngr.wait_until_finished()
    latest = mngr.latest_step()
    kept = (f"it resumes from its newest checkpoint, step {latest}," if latest is not None
            else "no checkpoint had been written: it starts afresh")
    raise Stopped(f"signal {self.received} stopped the run at step {step}; {kept} when the same "
                  "command is run again", self.received)
