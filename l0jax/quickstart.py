r"""The quick start: a network trained, pruned and examined in minutes, on a CPU, offline.

  python -m l0jax.quickstart --workdir=runs/quickstart

Fashion-MNIST from Debian's package (`apt-get install dataset-fashion-mnist`;
or `--data_dir=` a folder with its four IDX files), a GoogleNet at a quarter
of the width, batch 64, AdamW lr 0.003:

  WORKDIR/baseline  configs/baseline.py, 2 epochs: the network to prune
  WORKDIR/pruned    configs/finetune.py from it, 2 epochs with the MACs penalty
                    (lambda 40): gates close where the multiply-accumulates are

Then the baseline's last checkpoint is tested, and the pruned network's is
tested (test accuracy, and the per-layer table of what was kept), exported
(the compact network, checked against the gated one) and analysed (figures
in WORKDIR/pruned/analysis/).
Each step prints the `main.py` command that does the same on its own, and
runs in this process. Run again, it resumes where it stopped. The README's
quick start gives the wall time and output of one run.
"""

import importlib.util
import os
import pathlib
import sys
import time
from typing import Any, Callable

import ml_collections
from absl import app, flags, logging

from l0jax import analysis, checkpoint_modes, cli, data, train, workdirs, writers
from l0jax.errors import UserError

COMMON = {"dataset": "fashion_mnist", "width_multiplier": 0.25, "batch_size": 64,
          "learning_rate": 0.003, "num_epochs": 2}
# name: (config file, its overrides besides COMMON; "{baseline}" is WORKDIR/baseline)
STAGES = {
    "baseline": ("baseline", {}),
    "pruned": ("finetune", {"penalty": "macs", "lambda_l0": 40.0, "init_from": "{baseline}"}),
}
CHECKPOINT = "last"  # the network the penalty made, not an earlier one that validated better

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where the two runs go (WORKDIR/baseline, WORKDIR/pruned).")
flags.DEFINE_string("data_dir", "", "A folder with Fashion-MNIST's four IDX files (raw or .gz); "
                    f"empty: Debian's {data.DEBIAN_FASHION_MNIST_DIR}.")


def recipe(name: str, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """configs/NAME.py's config, as `main.py --config=configs/NAME.py` loads it, with `overrides`."""
  spec = importlib.util.spec_from_file_location(name, cli.checkout() / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.update(overrides)
  return config


def _flag(value: Any) -> str:
  return f"'({','.join(map(str, value))},)'" if isinstance(value, tuple) else str(value)


def command(*args: str, **config: Any) -> str:
  return " ".join(["python main.py", *args, *(f"--config.{k}={_flag(v)}" for k, v in
                                               config.items())])


def checkpoint_step(mode: str, step: Callable[[str, str], dict], workdir: str) -> dict:
  """`main.py --mode=MODE` on CHECKPOINT of `workdir`, in this process, its command said first."""
  logging.info("quick start, %s: %s", mode, command(f"--mode={mode}", f"--checkpoint={CHECKPOINT}",
                                                   f"--workdir={workdir}"))
  return step(workdir, CHECKPOINT)


def run(workdir: str, data_dir: str = "", overrides: dict[str, Any] | None = None) -> dict:
  """Trains, prunes, tests, exports and analyses; returns the pruned run's test metrics.

  `overrides` replace COMMON's values (the tests use it for tiny runs).
  """
  common = {**COMMON, **({"data_dir": data_dir} if data_dir else {}), **(overrides or {})}
  if (common["dataset"] == "fashion_mnist" and not common.get("data_dir")
      and not os.path.isdir(data.DEBIAN_FASHION_MNIST_DIR)):
    raise UserError(f"the quick start reads Fashion-MNIST from {data.DEBIAN_FASHION_MNIST_DIR}, "
                    "which is missing: install Debian's package (apt-get install "
                    "dataset-fashion-mnist), or give --data_dir=FOLDER holding "
                    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte "
                    "and t10k-labels-idx1-ubyte (raw or .gz)")

  start = time.monotonic()
  stage_dirs = {name: os.path.join(workdir, name) for name in STAGES}
  for name, (config_name, own) in STAGES.items():
    own = {k: v.format(**stage_dirs) if isinstance(v, str) else v for k, v in own.items()}
    logging.info("quick start, %s: %s", name, command(
        f"--config=configs/{config_name}.py", f"--workdir={stage_dirs[name]}", **common, **own))
    with workdirs.training_lock(stage_dirs[name]):  # as main.py trains: one process at a time
      train.train_and_evaluate(recipe(config_name, {**common, **own}), stage_dirs[name])
  pruned = stage_dirs["pruned"]
  baseline = checkpoint_step("test", checkpoint_modes.test_checkpoint, stage_dirs["baseline"])
  result = checkpoint_step("test", checkpoint_modes.test_checkpoint, pruned)
  checkpoint_step("export", checkpoint_modes.export_checkpoint, pruned)
  checkpoint_step("analyze", analysis.analyze, pruned)
  print(f"\nQuick start done in {(time.monotonic() - start) / 60:.1f} min: the baseline's test "
        f"accuracy is {baseline['test_accuracy']:.2%}; pruned, {result['test_accuracy']:.2%} "
        f"with {result['macs_kept_fraction']:.1%} of its MACs and "
        f"{result['params_kept_fraction']:.1%} of its parameters. Figures in "
        f"{os.path.join(pruned, workdirs.ANALYSIS_DIR)}; TensorBoard: {writers.TENSORBOARD_INSTALL}"
        f" (the core install writes its files but has no viewer), then tensorboard --logdir "
        f"{workdir}")
  return result


def main(argv: list[str]) -> None:
  cli.quiet_libraries()
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.workdir:
    cli.fail("--workdir is required")
  with cli.one_line_errors("the quick start", "What was complete is kept: fix this and run the "
                           "same command again to resume"):
    run(FLAGS.workdir, FLAGS.data_dir)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
