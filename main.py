r"""l0jax: train, test, export and analyse L0-gated GoogleNets.

  python main.py --config=configs/gated.py --workdir=runs/gated        # train, or resume
  python main.py --mode=test --workdir=runs/gated                      # best checkpoint, test split
  python main.py --mode=test --checkpoint=last --workdir=runs/gated    # the newest instead
  python main.py --mode=export --workdir=runs/gated                    # compact network
  python main.py --mode=analyze --workdir=runs/gated                   # figures of the gates
  python -m l0jax.quickstart --workdir=runs/quickstart                 # all of it, in minutes

Any config field can be set with --config.FIELD=VALUE (--config.lambda_l0=1.0,
--config.lr_milestones='(10,20)'): the fields, their defaults and what they do are
in l0jax/config.py and the README's "Config fields"; configs/*.py say what each
recipe changes.

Bad input ends with one line on stderr and exit status 2 (--debug shows the
traceback instead).
"""

import contextlib
import os
import sys
import traceback

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from l0jax import config as config_lib
from l0jax import locking
from l0jax import writers
from l0jax.errors import UserError, os_failure

MODES = ("train", "test", "export", "analyze")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A file in configs/ (train mode only).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where the run's config, checkpoints and logs live.")
flags.DEFINE_enum("mode", "train", MODES, "What to do with the workdir.")
flags.DEFINE_enum("checkpoint", "best", config_lib.CHECKPOINTS,
                  "The checkpoint test, export and analyze read: the best by validation "
                  "accuracy, or the newest.")
flags.DEFINE_bool("multihost", False,
                  "One process of several (one per host): joins them with "
                  "jax.distributed.initialize() before anything else.")
# jax.distributed.initialize's own arguments. Unset, JAX reads JAX_COORDINATOR_ADDRESS, and finds
# all three on the clusters it knows (Slurm, Open MPI, Kubernetes, Cloud TPU).
flags.DEFINE_string("coordinator_address", None,
                    "--multihost: HOST:PORT of process 0, which every process can reach.")
flags.DEFINE_integer("num_processes", None, "--multihost: how many processes take part.",
                     lower_bound=1)
flags.DEFINE_integer("process_id", None, "--multihost: this process's index, from 0.",
                     lower_bound=0)
flags.DEFINE_bool("debug", False, "Show Python tracebacks for bad input too.")


def fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _config_file_error(e: OSError) -> str:
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


def _raised_in_config_file(e: BaseException, argv: list[str]) -> str | None:
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
    return _config_file_error(e)
  # --config.KEY for a KEY that the config lacks: ml_collections raises
  # AttributeError(KeyError("'KEY'\nDid you mean ...")).
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  name, *hint = str(e.args[0] if e.args else e).splitlines()
  return f"the config has no field {name}" + (f" ({' '.join(hint)})" if hint else "")


HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with flag errors (an unknown config key, a wrong type) as one line."""
  try:
    return FLAGS(argv)
  except SystemExit:
    if any(arg in HELP_FLAGS for arg in argv[1:]):
      sys.exit(0)  # absl exits with 1 after printing the help that was asked for.
    raise
  except Exception as e:  # pylint: disable=broad-except  # The --config file may raise anything.
    if "--debug" in argv:
      raise
    in_config_file = _raised_in_config_file(e, argv)
    if in_config_file:
      fail(in_config_file)
    if not isinstance(e, (flags.Error, OSError, AttributeError, KeyError)):
      raise
    fail(_flag_error(e))


def train_config() -> ml_collections.ConfigDict:
  """The --config file with its overrides, checked before JAX loads so that bad values fail fast."""
  if FLAGS.config is None:
    raise UserError("--mode=train needs --config=configs/SOMETHING.py")
  try:
    config_lib.validate(FLAGS.config)
  except OSError as e:  # ml_collections reports an OSError of the config file at its first use.
    raise UserError(_raised_in_config_file(e, sys.argv) or _config_file_error(e)) from e
  return FLAGS.config


def workdir_lock(workdir: str) -> contextlib.AbstractContextManager:
  """Training's hold on `workdir`, taken by process 0 alone: a run's processes share it."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() > 0:
    return contextlib.nullcontext()
  return locking.held(workdir, "--workdir")


def check_multihost_flags() -> None:
  given = [f"--{name}" for name in ("coordinator_address", "num_processes", "process_id")
           if FLAGS[name].present]
  if given and not FLAGS.multihost:
    raise UserError(f"{', '.join(given)} set without --multihost")


def join_processes() -> None:
  """jax.distributed.initialize with the flags that are set; JAX finds the others or says why.

  On CPU the processes exchange arrays through gloo, JAX's default there.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  try:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  except ValueError as e:  # "coordinator_address should be defined.", a process_id too large
    raise UserError(f"--multihost: {e} Set --coordinator_address, --num_processes and "
                    "--process_id (or run under a cluster JAX detects, such as Slurm)") from e
  # gloo gives the processes 30 s to meet at their first collective, and one
  # can compile for longer while another reads the compilation cache. So they
  # meet at a barrier of JAX's coordination service first (minutes), then start
  # gloo together; later collectives wait as long as they must.
  ocp.multihost.sync_global_processes("l0jax: joined", processes=set(range(jax.process_count())))
  multihost_utils.sync_global_devices("l0jax: collectives started")


def run(mode: str, workdir: str):
  check_multihost_flags()
  config = train_config() if mode == "train" else None
  # Imported here so that `--help` and bad flags or config values answer without loading JAX.
  from l0jax import evaluation, train  # pylint: disable=import-outside-toplevel

  if FLAGS.multihost:
    join_processes()
  if mode == "train":
    from l0jax import checkpoints  # pylint: disable=import-outside-toplevel
    given = config_flags.get_override_values(FLAGS["config"])
    with workdir_lock(workdir):  # Before anything compiles: a second run is refused at once.
      train.train_and_evaluate(checkpoints.with_source_fields(workdir, config, given), workdir)
  elif mode == "test":
    evaluation.test(workdir, FLAGS.checkpoint)
  elif mode == "export":
    evaluation.export(workdir, FLAGS.checkpoint)
  else:
    from l0jax import analysis  # pylint: disable=import-outside-toplevel
    analysis.analyze(workdir, FLAGS.checkpoint)


def quiet_unraisable(unraisable) -> None:
  """sys.unraisablehook: one debug line instead of a traceback.

  TensorStore reports this way what its callbacks raise into Orbax's closed
  event loop after a write failed: pages of "Event loop is closed" before the
  one line that reports the failure.
  """
  logging.debug("Ignored: %s: %s", unraisable.exc_type.__name__, unraisable.exc_value)


def main(argv: list[str]) -> None:
  logging.get_absl_handler().addFilter(writers.QuietLibraries(tracebacks=FLAGS.debug))
  if not FLAGS.debug:
    sys.unraisablehook = quiet_unraisable
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.workdir:
    fail("--workdir is required")
  try:
    run(FLAGS.mode, FLAGS.workdir)
  except UserError as e:
    if FLAGS.debug:
      raise
    logging.flush()
    fail(str(e))
  except Exception as e:  # pylint: disable=broad-except  # Only an OS failure is not a bug.
    reason = os_failure(e)
    if FLAGS.debug or reason is None:
      raise
    logging.flush()
    print(f"error: --mode={FLAGS.mode} stopped, as the system refused a write: {reason}. What "
          "was complete is kept (the newest checkpoint, history.jsonl, config.json); fix this and "
          "run the same command again" + (" to resume" if FLAGS.mode == "train" else ""),
          file=sys.stderr, flush=True)
    # Not sys.exit: at exit, TensorBoard's and Orbax's writers would try the failed writes again,
    # and print pages of tracebacks after this line.
    os._exit(2)  # pylint: disable=protected-access


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
