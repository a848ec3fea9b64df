r"""l0jax: train, test, export and analyse L0-gated GoogleNets.

  python main.py --config=configs/gated.py --workdir=runs/gated        # train, or resume
  python main.py --mode=test --workdir=runs/gated                      # best checkpoint, test split
  python main.py --mode=test --checkpoint=last --workdir=runs/gated    # the newest instead
  python main.py --mode=export --workdir=runs/gated                    # compact network
  python main.py --mode=analyze --workdir=runs/gated                   # figures of the gates

Bad input ends with one line on stderr and exit status 2 (--debug shows the
traceback instead).
"""

import logging as py_logging
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from l0jax import config as config_lib
from l0jax.errors import UserError

MODES = ("train", "test", "export", "analyze")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A file in configs/ (train mode only).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where the run's config, checkpoints and logs live.")
flags.DEFINE_enum("mode", "train", MODES, "What to do with the workdir.")
flags.DEFINE_enum("checkpoint", "best", config_lib.CHECKPOINTS,
                  "The checkpoint test, export and analyze read: the best by validation "
                  "accuracy, or the newest.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (one process per host).")
flags.DEFINE_bool("debug", False, "Show Python tracebacks for bad input too.")


def fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _config_file_error(e: OSError) -> str:
  # ml_collections lists every path it tried; the last line says why the file did not load.
  return f"cannot load --config: {str(e).splitlines()[-1].strip()}"


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


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with flag errors (an unknown config key, a wrong type) as one line."""
  try:
    return FLAGS(argv)
  except (flags.Error, OSError, AttributeError, KeyError) as e:
    if "--debug" in argv:
      raise
    fail(_flag_error(e))


def train_config() -> ml_collections.ConfigDict:
  """The --config file with its overrides, checked before JAX loads so that bad values fail fast."""
  if FLAGS.config is None:
    raise UserError("--mode=train needs --config=configs/SOMETHING.py")
  try:
    config_lib.validate(FLAGS.config)
  except OSError as e:  # ml_collections reports a missing config file at its first use.
    raise UserError(_config_file_error(e)) from e
  return FLAGS.config


def run(mode: str, workdir: str):
  config = train_config() if mode == "train" else None
  # Imported here so that `--help` and bad flags or config values answer without loading JAX.
  import jax  # pylint: disable=import-outside-toplevel
  from l0jax import evaluation, train  # pylint: disable=import-outside-toplevel

  if FLAGS.multihost:
    jax.distributed.initialize()
  if mode == "train":
    train.train_and_evaluate(config, workdir)
  elif mode == "test":
    evaluation.test(workdir, FLAGS.checkpoint)
  elif mode == "export":
    evaluation.export(workdir, FLAGS.checkpoint)
  else:
    from l0jax import analysis  # pylint: disable=import-outside-toplevel
    analysis.analyze(workdir, FLAGS.checkpoint)


class QuietLibraries(py_logging.Filter):
  """Keeps Orbax's per-checkpoint INFO chatter off the console; its warnings still show."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
  logging.get_absl_handler().addFilter(QuietLibraries())
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


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
