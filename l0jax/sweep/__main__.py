r"""A sweep on one dataset: the baseline, L0 from scratch, L0 fine-tuned from the baseline.

  python -m l0jax.sweep --sweep_dir=runs/fmnist_budget --scratch_lambdas= --finetune_lambdas= \
      --target_macs=0.5,0.3,0.2 --retrain_budgets --config.dataset=fashion_mnist

prunes the baseline to each budget in one run (configs/prune_to_budget.py),
then retrains each pruned network with its gates fixed; lambdas are the
advanced route:

  python -m l0jax.sweep --sweep_dir=runs/fmnist \
      --scratch_lambdas=0.25,0.5,1 --finetune_lambdas=10,20,30,50 \
      --config.dataset=fashion_mnist --config.num_epochs=60 \
      --baseline.lr_milestones='(40,50)' --scratch.lr_milestones='(40,50)' \
      --finetune.lr_milestones='(5,20,35,45,55)' \
      --retrain_lambdas=30,50 --retrain.num_epochs=20 --retrain.lr_milestones='(10,15)'

Every member is `main.py` in its own process, trained then tested at its last
checkpoint (`--checkpoint=last`: the network its lambda made; the best by
validation accuracy can be one from before the gates closed), exactly as a
user would run it, so that one crash does not end the sweep:

  SWEEP_DIR/baseline            baseline.py         -
  SWEEP_DIR/scratch_lambda{L}   gated.py            lambda_l0=L
  SWEEP_DIR/finetune_lambda{L}  finetune.py         lambda_l0=L, init_from=SWEEP_DIR/baseline
  SWEEP_DIR/budget_macs{T}      prune_to_budget.py  target_macs=T, init_from=SWEEP_DIR/baseline
  SWEEP_DIR/retrain_lambda{L}   retrain.py          init_from=SWEEP_DIR/finetune_lambda{L}
  SWEEP_DIR/retrain_macs{T}     retrain.py          init_from=SWEEP_DIR/budget_macs{T}

(recipes in configs/; `budget_params{T}` for `--target_params`; the retrained
ones: the network fine-tuning at lambda L, or to budget T, pruned, retrained
with its gates fixed, for each L of `--retrain_lambdas` and, with
`--retrain_budgets`, each budget). `--config.KEY=VALUE` goes to every member;
`--baseline.KEY=VALUE` (`--scratch.`, `--finetune.`, `--budget.`, `--retrain.`)
to one kind, over the common value. A member is finished when its
test_metrics.json of the last checkpoint exists: finished members are skipped
and an unfinished one resumes from its checkpoints, so a rerun of an
interrupted sweep continues it. Each member's training output goes to its
`sweep.log`, its test's to `sweep_test.log` (so that reading how a run
trained shows no test number).

A comparison that would survive review (the README's protocols) adds
`--control` (the baseline trained on with nothing pruned, as long as the
pruned runs: `--control.num_epochs`), `--masks=l1_norm,random` (the simple
methods, at the cost each budget run realised: SWEEP_DIR/l1_norm_macs{T},
configs/mask.py from the baseline; `decided` and `random_widths`: the budget
run's own channels, or random ones at its widths, on the baseline's weights),
`--scratch_budgets=macs{T}` (that budget also from scratch:
SWEEP_DIR/scratch_macs{T}, configs/prune_from_scratch.py) and `--seeds=0,1,2`
(every member once per seed, SWEEP_DIR/NAME_seed{S}, started from and
compared with the same seed's runs).

The same command with `--status` runs nothing and prints each member's state
(finished, running, stopped, not started), its epochs and training time, and an
estimate of the time left, from the members' files alone (it reads no test
number and takes no lock, so it can watch a sweep as it runs).

Then SWEEP_DIR gets results.json, results.md (the table) and front.png from
the finished members' test_metrics.json. "Train time" is the sum of the
member's epoch times in history.jsonl (training and validation; not process
start-up, data loading or the test), which an interruption does not lose.
"""

import pathlib
import shlex
import sys
import time
from typing import Any, Sequence

from absl import app, flags, logging

from l0jax import cli, locking, run_config
from l0jax.errors import UserError
from l0jax.sweep import planning, reporting, running, status

FLAGS = flags.FLAGS
flags.DEFINE_string("sweep_dir", None, "Where the members' workdirs and the results go.")
flags.DEFINE_list("scratch_lambdas", ["0.25", "0.5", "1"], "lambda_l0 of the from-scratch runs.")
flags.DEFINE_list("finetune_lambdas", ["10", "20", "30", "50"],
                  "lambda_l0 of the runs fine-tuned from the baseline.")
flags.DEFINE_list("retrain_lambdas", [],
                  "Of --finetune_lambdas: the fine-tuned runs whose network is then retrained "
                  "with its gates fixed.")
flags.DEFINE_list("target_macs", [], "Kept fractions of the MACs to prune the baseline to, "
                  "one run each (configs/prune_to_budget.py).")
flags.DEFINE_list("target_params", [], "Kept fractions of the parameters, likewise.")
flags.DEFINE_bool("retrain_budgets", False,
                  "Retrain every network pruned to a budget with its gates fixed.")
flags.DEFINE_list("scratch_budgets", [],
                  "Of the budgets (--target_macs, --target_params): those also pruned to from "
                  "scratch (configs/gated.py with the target), named as their budget runs are: "
                  "macs0.5, params0.25.")
flags.DEFINE_list("masks", [], "Masks to compare with each budget run, trained from the "
                  "baseline (configs/mask.py): "
                  f"{', '.join(m for m in planning.MASKS if m not in run_config.MASKS_FROM_RUN)} "
                  f"at the cost it realised; {', '.join(run_config.MASKS_FROM_RUN)} from its "
                  "gates.")
flags.DEFINE_bool("control", False, "The baseline trained on with nothing pruned, for as long "
                  "as the pruned runs train after it (--control.num_epochs).")
flags.DEFINE_list("seeds", [], "Run every member once per seed (members named NAME_seed{S}); "
                  "empty: once, with the config's seed.")
flags.DEFINE_bool("status", False, "Run nothing: print each member's state and epochs, and an "
                  "estimate of the time left, from the members' files (no test number). Takes "
                  "no lock, so it can watch a sweep that is running.")


def sweep(sweep_dir: pathlib.Path, members: Sequence[planning.Member],
          command: str) -> dict[str, Any]:
  """Runs every unfinished member of `plan` in turn, then writes the results; returns them."""
  start = time.monotonic()
  finished = [running.run_member(m, sweep_dir) for m in members]
  results = reporting.collect(sweep_dir, members, command)
  reporting.write_results(sweep_dir, results)
  logging.info("%s: %d of %d runs finished (this invocation took %s); %s, %s and %s written",
               sweep_dir, sum(finished), len(members),
               reporting.hours_or_minutes(time.monotonic() - start),
               reporting.RESULTS_FILE, reporting.TABLE_FILE, reporting.FRONT_FILE)
  return results


def _floats(flag: str, values: Sequence[str]) -> list[float]:
  try:
    return [float(v) for v in values]
  except ValueError:
    raise UserError(f"--{flag} must be a comma-separated list of numbers, not {values}") from None


def _seeds(values: Sequence[str]) -> list[int]:
  try:
    return [int(v) for v in values]
  except ValueError:
    raise UserError(f"--seeds must be a comma-separated list of integers, not {values}") from None


def main(argv: list[str]) -> None:
  cli.quiet_libraries()
  with cli.one_line_errors("the sweep", "The finished runs are kept: fix this and run the same "
                           "command again"):
    if not FLAGS.sweep_dir:
      raise UserError("--sweep_dir is required")
    sweep_dir = pathlib.Path(FLAGS.sweep_dir).absolute()
    cli.checkout()  # refused before anything runs, not at the first member
    members = planning.plan(
        sweep_dir, _floats("scratch_lambdas", FLAGS.scratch_lambdas),
        _floats("finetune_lambdas", FLAGS.finetune_lambdas), planning.parse_settings(argv[1:]),
        _floats("retrain_lambdas", FLAGS.retrain_lambdas),
        [(kind, target) for kind in run_config.TARGET_KINDS
         for target in _floats(f"target_{kind}", FLAGS[f"target_{kind}"].value)],
        FLAGS.retrain_budgets, scratch_budgets=FLAGS.scratch_budgets, masks=FLAGS.masks,
        control=FLAGS.control, seeds=_seeds(FLAGS.seeds))
    for member in members:  # Every config as main.py would check it, before anything is written.
      running.check(member, sweep_dir)
    if FLAGS.status:
      print(status.report(sweep_dir, members), end="")
      return
    with locking.exclusive_folder(str(sweep_dir), "--sweep_dir"):
      results = sweep(sweep_dir, members,
                      shlex.join(["python", "-m", "l0jax.sweep", *sys.argv[1:]]))
  if results["unfinished"]:
    sys.exit(1)


if __name__ == "__main__":
  # Flags the sweep does not know are the members' settings, handed to `main`.
  app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, known_only=True))
