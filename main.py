r"""l0jax: train, test, export and analyse L0-gated networks (GoogleNet, ResNet, VGG).

  python main.py --config=configs/gated.py --workdir=runs/gated        # train, or resume
  python main.py --mode=test --workdir=runs/gated                      # best checkpoint, test split
  python main.py --mode=test --checkpoint=last --workdir=runs/gated    # the newest instead
  python main.py --mode=export --workdir=runs/gated                    # compact network
  python main.py --mode=export --noexport_onnx --workdir=runs/gated    # without inference.onnx
  python main.py --mode=analyze --workdir=runs/gated                   # figures of the gates
  python -m l0jax.quickstart --workdir=runs/quickstart                 # all of it, in minutes

Any config field can be set with --config.FIELD=VALUE (--config.lambda_l0=1.0,
--config.lr_milestones='(10,20)'): the fields, their defaults and what they do are
in l0jax/run_config.py and the README's "Config fields"; configs/*.py say what each
recipe changes.

Bad input ends with one line on stderr and exit status 2 (--debug shows the
traceback instead).
"""

import contextlib
import sys

from absl import app, flags
import ml_collections
from ml_collections import config_flags

from l0jax import cli, hosts, run_config
from l0jax.errors import UserError

MODES = ("train", "test", "export", "analyze")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A file in configs/ (train mode only).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where the run's config, checkpoints and logs live.")
flags.DEFINE_enum("mode", "train", MODES, "What to do with the workdir.")
flags.DEFINE_enum("checkpoint", "best", run_config.CHECKPOINTS,
                  "The checkpoint test, export and analyze read: the best by validation "
                  "accuracy, or the newest.")
flags.DEFINE_bool("export_onnx", None,
                  "--mode=export: also write the compact network as inference.onnx, for "
                  "onnxruntime (needs the onnx extra). Default: if the extra is installed.")
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
flags.DEFINE_integer("peer_timeout", hosts.DEFAULT_PEER_TIMEOUT,
                     "--multihost: seconds the processes wait for each other to join; past it, "
                     f"each ends with exit status {hosts.NEVER_JOINED}.", lower_bound=1)
flags.DEFINE_string("compilation_cache", None,
                    "Folder of JAX's persistent compilation cache, from which a later run of the "
                    "same network loads its compiled steps ('': none). Default: "
                    "$JAX_COMPILATION_CACHE_DIR if set, else ~/.cache/l0jax/jax (at most 2 GiB). "
                    "None with --multihost.")
flags.DEFINE_bool("debug", False, "Show Python tracebacks for bad input too.")


def check_multihost_flags() -> None:
  given = [f"--{name}" for name in ("coordinator_address", "num_processes", "process_id",
                                    "peer_timeout") if FLAGS[name].present]
  if given and not FLAGS.multihost:
    raise UserError(f"{', '.join(given)} set without --multihost")


def run(mode: str, workdir: str) -> None:
  check_multihost_flags()
  if FLAGS["export_onnx"].present and mode != "export":
    raise UserError("--export_onnx and --noexport_onnx are for --mode=export")
  config = cli.checked_config(FLAGS.config, sys.argv) if mode == "train" else None
  if FLAGS.multihost and not hosts.is_child():
    hosts.supervise(sys.argv, workdir if mode == "train" else None, FLAGS.process_id,
                    FLAGS.num_processes, FLAGS.debug)
  if FLAGS.multihost:
    hosts.native_log_to_supervisor()
  with hosts.peer_errors(FLAGS.debug) if FLAGS.multihost else contextlib.nullcontext():
    run_mode(mode, workdir, config)


def run_mode(mode: str, workdir: str, config: "ml_collections.ConfigDict | None") -> None:
  # Imported here so that `--help` and bad flags or config values answer without loading JAX.
  from l0jax import checkpoint_modes, train  # pylint: disable=import-outside-toplevel

  # Several processes compile afresh: on JAX 0.12.1, CPU processes whose training step came
  # from the persistent cache hung at its first collective.
  cli.use_compilation_cache("" if FLAGS.multihost else FLAGS.compilation_cache)
  if FLAGS.multihost:
    hosts.join(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
               FLAGS.peer_timeout)
  if mode == "train":
    from l0jax import workdirs  # pylint: disable=import-outside-toplevel
    given = config_flags.get_override_values(FLAGS["config"])
    # Before anything compiles: a second run is refused at once.
    with workdirs.training_lock(workdir):
      train.train_and_evaluate(workdirs.with_source_fields(workdir, config, given), workdir)
  elif mode == "test":
    checkpoint_modes.test_checkpoint(workdir, FLAGS.checkpoint)
  elif mode == "export":
    checkpoint_modes.export_checkpoint(workdir, FLAGS.checkpoint, FLAGS.export_onnx)
  else:
    from l0jax import analysis  # pylint: disable=import-outside-toplevel
    analysis.analyze(workdir, FLAGS.checkpoint)


def main(argv: list[str]) -> None:
  cli.quiet_libraries(debug=FLAGS.debug)
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.workdir:
    cli.fail("--workdir is required")
  kept = ("What was complete is kept (the newest checkpoint, history.jsonl, config.json); fix "
          "this and run the same command again" + (" to resume" if FLAGS.mode == "train" else ""))
  with cli.one_line_errors(f"--mode={FLAGS.mode}", kept, debug=FLAGS.debug):
    run(FLAGS.mode, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
