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
interrupted sweep continues it. Each member's console output goes to its
`sweep.log`.

A comparison that would survive review (results/fashion_mnist/PROTOCOL.md)
adds `--control` (the baseline trained on with nothing pruned, as long as the
pruned runs: `--control.num_epochs`), `--masks=l1_norm,random` (the simple
methods, at the cost each budget run realised: SWEEP_DIR/l1_norm_macs{T},
configs/mask.py from the baseline; `decided` and `random_widths`: the budget
run's own channels, or random ones at its widths, on the baseline's weights),
`--scratch_budgets=macs{T}` (that budget
also from scratch: SWEEP_DIR/scratch_macs{T}) and `--seeds=0,1,2` (every member
once per seed, SWEEP_DIR/NAME_seed{S}, started from and compared with the
same seed's runs).

Then SWEEP_DIR gets results.json, results.md (the table) and front.png from
the finished members' test_metrics.json. "Train time" is the sum of the
member's epoch times in history.jsonl (training and validation; not process
start-up, data loading or the test), which an interruption does not lose.
"""

import dataclasses
import json
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

from absl import app, flags, logging
import numpy as np
from matplotlib.figure import Figure

from l0jax import analysis, cli, locking, masks, stats, workdirs
from l0jax import config as config_lib
from l0jax.errors import UserError

MASKS = masks.METHODS  # kinds that are one-shot masks (config.mask), same names
MASKS_FROM_RUN = masks.FROM_RUN  # of them, those made from the budget run's gates
KINDS = ("baseline", "control", "scratch", "finetune", "budget", "retrain") + MASKS
CONFIG_FILES = {"baseline": "baseline.py", "control": "baseline.py", "scratch": "gated.py",
                "finetune": "finetune.py", "budget": "prune_to_budget.py", "retrain": "retrain.py",
                **{kind: "mask.py" for kind in MASKS}}
# Set by the sweep, per member.
SWEEP_KEYS = ("lambda_l0", "init_from", "init_checkpoint", "seed", "mask", "mask_from",
              *(f"target_{kind}" for kind in config_lib.TARGET_KINDS))
COST_NAMES = {"macs": "MACs", "params": "params"}
RESULTS_FILE, TABLE_FILE, FRONT_FILE = "results.json", "results.md", "front.png"
# Members are tested at their last checkpoint: the network their lambda made.
# The best by validation can be one from before the gates closed.
CHECKPOINT = "last"
# The best trade-off: of the pruned runs with at most TARGET_MACS of the MACs,
# the one with the highest validation accuracy (test accuracy chooses nothing).
TARGET_MACS = 0.5
NOT_PRUNED = ("baseline", "control")
# What the table takes from a member's test_metrics.json.
NUMBERS = ("test_accuracy", "checkpoint_step", "params_full", "params_kept",
           "params_kept_fraction", "macs_full", "macs_kept", "macs_kept_fraction")
MARKERS = {"baseline": "*", "control": "P", "scratch": "o", "finetune": "s", "budget": "^",
           "retrain": "D", "l1_norm": "v", "l1_norm_relative": "<", "random": "x",
           "decided": "d", "random_widths": "+"}
COLORS = {"baseline": "k", "control": "0.4", "scratch": "tab:orange", "finetune": "tab:blue",
          "budget": "tab:red", "retrain": "tab:green", "l1_norm": "tab:purple",
          "l1_norm_relative": "tab:pink", "random": "tab:brown", "decided": "tab:olive",
          "random_widths": "tab:cyan"}
LABELS = {"baseline": "baseline (no gates)",
          "control": "baseline trained on, nothing pruned (same budget)",
          "scratch": "L0 from scratch",
          "finetune": "L0 fine-tuned from the baseline",
          "budget": "pruned from the baseline to a budget",
          "retrain": "pruned, then retrained with its gates fixed",
          "l1_norm": "L1-norm filters at the same cost, trained",
          "l1_norm_relative": "L1-norm filters, relative to their layer's, same cost, trained",
          "random": "random channels at the same cost, trained",
          "decided": "the budget run's channels on the baseline's weights, trained",
          "random_widths": "random channels at the budget run's widths, trained"}

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
                  f"{', '.join(m for m in MASKS if m not in MASKS_FROM_RUN)} at the cost it "
                  f"realised; {', '.join(MASKS_FROM_RUN)} from its gates.")
flags.DEFINE_bool("control", False, "The baseline trained on with nothing pruned, for as long "
                  "as the pruned runs train after it (--control.num_epochs).")
flags.DEFINE_list("seeds", [], "Run every member once per seed (members named NAME_seed{S}); "
                  "empty: once, with the config's seed.")


@dataclasses.dataclass(frozen=True)
class Member:
  """One run of the sweep, and the --config.KEY=VALUE settings main.py trains it with."""

  name: str
  kind: str
  settings: dict[str, str]
  lambda_l0: float | None = None  # The lambda that pruned its network...
  target: tuple[str, float] | None = None  # ...or the budget: (kind of cost, kept fraction).
  after: str | None = None  # The member whose checkpoint it starts from.
  # The member whose realised cost is this one's budget (a mask's), read once it is tested.
  cost_of: str | None = None
  seed: int | None = None

  def check(self, sweep_dir: pathlib.Path) -> None:
    """Refuses a member whose config main.py would refuse, before the sweep writes anything."""
    try:
      cli.command_config(self.commands(sweep_dir)[0][1:])
    except UserError as e:
      raise UserError(f"{self.name}: {e}") from e

  def commands(self, sweep_dir: pathlib.Path) -> list[list[str]]:
    """Train (or resume), then test: the two main.py command lines."""
    repo, workdir = cli.checkout(), f"--workdir={sweep_dir / self.name}"
    main = [sys.executable, str(repo / "main.py")]
    return [main + [f"--config={repo / 'configs' / CONFIG_FILES[self.kind]}", workdir,
                    *(f"--config.{k}={v}" for k, v in self.settings.items())],
            main + ["--mode=test", f"--checkpoint={CHECKPOINT}", workdir]]


def parse_settings(args: Sequence[str]) -> dict[str, dict[str, str]]:
  """`--config.KEY=VALUE` and `--{kind}.KEY=VALUE` arguments as each kind's settings."""
  common, own = {}, {kind: {} for kind in KINDS}
  for arg in args:
    match = re.fullmatch(rf"--(config|{'|'.join(KINDS)})\.(\w+)=(.*)", arg, re.DOTALL)
    if not match:
      raise UserError(f"unexpected argument {arg!r}: settings are --config.KEY=VALUE (every run) "
                      f"or --{{{','.join(KINDS)}}}.KEY=VALUE (one kind)")
    scope, key, value = match.groups()
    if key in SWEEP_KEYS:
      raise UserError(f"{key} is set by the sweep for each run; use --scratch_lambdas / "
                      "--finetune_lambdas / --target_macs / --target_params / "
                      "--retrain_lambdas / --retrain_budgets (fine-tuning starts from "
                      "SWEEP_DIR/baseline, retraining from the pruned run, each from the "
                      f"{CHECKPOINT} checkpoint, the one tested)")
    (common if scope == "config" else own[scope])[key] = value
  return {kind: {**common, **own[kind]} for kind in KINDS}


def plan(sweep_dir: pathlib.Path, scratch_lambdas: Sequence[float],
         finetune_lambdas: Sequence[float], settings: dict[str, dict[str, str]],
         retrain_lambdas: Sequence[float] = (), targets: Sequence[tuple[str, float]] = (),
         retrain_budgets: bool = False, *, scratch_budgets: Sequence[str] = (),
         masks: Sequence[str] = (), control: bool = False,
         seeds: Sequence[int] = ()) -> list[Member]:
  """The baseline, the from-scratch runs, the fine-tuned runs, the budget runs (from the
  baseline, and from scratch), the control, then their retraining and the masks at the budget
  runs' costs; all of it once per seed of `seeds`, seed by seed. `targets`: (kind of cost,
  kept fraction) pairs."""
  if unknown := set(masks) - set(MASKS):
    raise UserError(f"--masks: {', '.join(sorted(unknown))} is not one of {', '.join(MASKS)}")
  if masks and not targets:
    raise UserError("--masks compares with budget runs at their cost: it needs --target_macs or "
                    "--target_params")
  if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
    raise UserError(f"--seeds={','.join(map(str, seeds))}: each seed once, each >= 0")
  if set(retrain_lambdas) - set(finetune_lambdas):
    raise UserError(f"--retrain_lambdas={','.join(map(str, retrain_lambdas))}: each must be one "
                    f"of --finetune_lambdas={','.join(map(str, finetune_lambdas))}, the run it "
                    "retrains")
  members = [Member("baseline", "baseline", settings["baseline"])]
  for kind, lambdas in (("scratch", scratch_lambdas), ("finetune", finetune_lambdas),
                        ("retrain", retrain_lambdas)):
    if len(set(lambdas)) != len(lambdas):
      raise UserError(f"--{kind}_lambdas lists a lambda twice: {list(lambdas)}")
    for lam in lambdas:
      if lam < 0:
        raise UserError(f"--{kind}_lambdas: lambda_l0={lam:g} must be >= 0")
      after = {"scratch": None, "finetune": "baseline", "retrain": f"finetune_lambda{lam:g}"}[kind]
      # A retrained network keeps the gates its lambda made: no lambda of its own.
      own = {} if kind == "retrain" else {"lambda_l0": repr(lam)}
      if after:
        own["init_from"] = str(sweep_dir / after)
      members.append(Member(f"{kind}_lambda{lam:g}", kind, {**settings[kind], **own}, lam,
                            after=after))
  if len(set(targets)) != len(targets):
    raise UserError(f"a target is listed twice: {list(targets)}")
  budget_names = [f"{cost}{target:g}" for cost, target in targets]
  if unknown := set(scratch_budgets) - set(budget_names):
    raise UserError(f"--scratch_budgets: {', '.join(sorted(unknown))} is not one of the budgets "
                    f"({', '.join(budget_names) or 'none: see --target_macs, --target_params'})")
  for cost, target in targets:
    if not 0 < target <= 1:
      raise UserError(f"--target_{cost}={target:g} must lie in (0, 1]")
    name = f"{cost}{target:g}"
    # One target: the recipe's default one is unset for a budget of the other kind.
    own = {**{f"target_{kind}": repr(target if kind == cost else 0.0)
              for kind in config_lib.TARGET_KINDS}, "init_from": str(sweep_dir / "baseline")}
    members.append(Member(f"budget_{name}", "budget", {**settings["budget"], **own},
                          target=(cost, target), after="baseline"))
    if retrain_budgets:
      members.append(Member(f"retrain_{name}", "retrain", {
          **settings["retrain"], "init_from": str(sweep_dir / f"budget_{name}")},
                            target=(cost, target), after=f"budget_{name}"))
    if name in scratch_budgets:
      members.append(Member(f"scratch_{name}", "scratch", {
          **settings["scratch"], **{k: v for k, v in own.items() if k != "init_from"}},
                            target=(cost, target)))
    for method in masks:
      mask = {"mask": method, "init_from": str(sweep_dir / "baseline")}
      if method in MASKS_FROM_RUN:  # the budget run's decided gates, on the baseline's weights
        members.append(Member(f"{method}_{name}", method, {
            **settings[method], **mask, "mask_from": str(sweep_dir / f"budget_{name}"),
            **{f"target_{kind}": "0.0" for kind in config_lib.TARGET_KINDS}},
                              target=(cost, target), after=f"budget_{name}"))
        continue
      # At the cost the budget run realised, not its target: both then cost the same.
      members.append(Member(f"{method}_{name}", method, {**settings[method], **mask},
                            target=(cost, target), after=f"budget_{name}",
                            cost_of=f"budget_{name}"))
  if control:
    members.append(Member("control", "control", {
        **settings["control"], "init_from": str(sweep_dir / "baseline")}, after="baseline"))
  # Retraining and masks after what they start from or match, in the order given.
  members = sorted(map(_from_tested_checkpoint, members),
                   key=lambda m: m.kind in ("retrain",) + MASKS)
  return [_for_seed(m, seed) for seed in seeds for m in members] if seeds else members


def _from_tested_checkpoint(member: Member) -> Member:
  """`member` starting from the checkpoint its `init_from` was tested at, whatever its recipe's
  default: arms compared with each other start from the same weights."""
  if "init_from" not in member.settings:
    return member
  return dataclasses.replace(member, settings={**member.settings, "init_checkpoint": CHECKPOINT})


def _for_seed(member: Member, seed: int) -> Member:
  """`member` as one seed's run: NAME_seed{S}, started from and matched with the same seed's."""
  named = lambda name: name and f"{name}_seed{seed}"
  settings = {**member.settings, "seed": str(seed)}
  for key in ("init_from", "mask_from"):
    if key in settings:
      settings[key] = named(settings[key])
  return dataclasses.replace(member, name=named(member.name), settings=settings,
                             after=named(member.after), cost_of=named(member.cost_of), seed=seed)


def realised_cost(member: Member, sweep_dir: pathlib.Path) -> Member:
  """A mask member with its budget set to what its `cost_of` member's test measured."""
  if not member.cost_of:
    return member
  metrics = workdirs.read_test_metrics(sweep_dir / member.cost_of)
  cost = member.target[0]
  targets = {f"target_{kind}": repr(metrics[f"{cost}_kept_fraction"] if kind == cost else 0.0)
             for kind in config_lib.TARGET_KINDS}
  return dataclasses.replace(member, settings={**member.settings, **targets})


def is_finished(workdir: pathlib.Path) -> bool:
  """Tested at CHECKPOINT (a test of another checkpoint is done again)."""
  metrics = workdirs.read_test_metrics(workdir)
  return metrics is not None and metrics.get("checkpoint") == CHECKPOINT


# A line that says what went wrong: main.py's one-line refusal, or a traceback's exception line.
_ERROR_LINE = re.compile(r"(error: |[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b:?)")


def _failure_line(output: str) -> str:
  """What a failed member said went wrong: its last error line (not the notes JAX prints after a
  traceback), or else its last line."""
  lines = [l.strip() for l in output.splitlines() if l.strip()]
  return next((l for l in reversed(lines) if _ERROR_LINE.match(l)), lines[-1] if lines else "")


def _run_forwarding_signals(command: list[str], log) -> int:
  """Runs `command` to its end, passing it the sweep's SIGTERM or SIGINT, and its exit status.

  The member runs in its own session (a Ctrl-C in the terminal reaches it
  once, through the sweep), and dies with the sweep; a signal it is passed
  lets it stop as it would alone, and the sweep then exits too.
  """
  received, children, pending = [], [], []

  def forward(signum, frame):  # pylint: disable=unused-argument
    received.append(signum)
    if children:
      children[0].send_signal(signum)
    else:  # It is starting: passed on once it has started.
      pending.append(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    children.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=cli.die_with_parent))
    while pending:
      children[0].send_signal(pending.pop(0))
    status = children[0].wait()
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  if received:
    logging.error("Stopped by signal %d, after the running member (%s) stopped.", received[0],
                  shlex.join(command))
    sys.exit(128 + received[0])
  return status


def run_member(member: Member, sweep_dir: pathlib.Path) -> bool:
  """Trains and tests one member unless it is finished; False if it did not finish."""
  workdir = sweep_dir / member.name
  if is_finished(workdir):
    logging.info("%s: finished before, skipped", member.name)
    return True
  if member.after and not is_finished(sweep_dir / member.after):
    logging.error("%s: not run, because %s, which it starts from, did not finish", member.name,
                  member.after)
    return False
  member = realised_cost(member, sweep_dir)
  workdir.mkdir(parents=True, exist_ok=True)
  log_path = workdir / workdirs.SWEEP_LOG_FILE
  for what, command in zip(("training", "testing"), member.commands(sweep_dir)):
    logging.info("%s: %s (output in %s)", member.name, what, log_path)
    start = time.monotonic()
    with log_path.open("a") as log:
      log.write(f"$ {shlex.join(command)}\n")
      log.flush()
      offset = log.tell()
      status = _run_forwarding_signals(command, log)
    if status:
      output = log_path.read_bytes()[offset:].decode(errors="replace")
      logging.error("%s: %s failed with exit status %d after %.0f s: %s", member.name, what,
                    status, time.monotonic() - start, _failure_line(output))
      return False
    logging.info("%s: %s took %.0f s", member.name, what, time.monotonic() - start)
  return True


def _unmeasured(workdir: pathlib.Path, why: str) -> UserError:
  return UserError(f"{workdir}: its {workdirs.TEST_METRICS_FILE} or {workdirs.HISTORY_FILE} does "
                   f"not hold the numbers of the table ({why}); delete its "
                   f"{workdirs.TEST_METRICS_FILE} to test it again")


def measured(workdir: pathlib.Path) -> dict[str, Any]:
  """A finished run's test metrics (of its last checkpoint), validation accuracy and train time."""
  metrics = workdirs.read_test_metrics(workdir)
  history = workdirs.load_history(workdir)
  try:
    numbers = {**{k: metrics[k] for k in NUMBERS},
               "val_accuracy": history[-1]["val_accuracy"],  # at the last checkpoint, the tested
               "epochs": len(history), "train_seconds": sum(h["epoch_seconds"] for h in history)}
  except (KeyError, TypeError) as e:  # A field missing, or a record that is not an object.
    raise _unmeasured(workdir, f"{type(e).__name__}: {e}") from e
  wrong = [f"{k}={v!r}" for k, v in numbers.items()
           if not isinstance(v, (int, float)) or isinstance(v, bool)]
  if wrong:
    raise _unmeasured(workdir, ", ".join(wrong))
  return {"dataset": str(metrics.get("dataset")), **numbers}


def collect(sweep_dir: pathlib.Path, members: Sequence[Member], command: str) -> dict[str, Any]:
  """Every finished member's test metrics and train time, and the best trade-off among them."""
  runs, unfinished = [], []
  for member in members:
    workdir = sweep_dir / member.name
    if not is_finished(workdir):
      unfinished.append(member.name)
      continue
    runs.append({
        "name": member.name, "kind": member.kind, "lambda_l0": member.lambda_l0,
        "seed": member.seed,
        "target_kind": member.target[0] if member.target else None,
        "target": member.target[1] if member.target else None,
        **measured(workdir)})
  return summarise(runs, unfinished, command)


def summarise(runs: Sequence[dict[str, Any]], unfinished: Sequence[str],
              command: str) -> dict[str, Any]:
  """The results of `runs` (as `collect` makes them): each one's change from its seed's
  baseline, the best trade-off, and with seeds the groups' means, spreads and paired differences."""
  baselines = {r["seed"]: r for r in runs if r["kind"] == "baseline"}
  runs = [{k: v for k, v in r.items() if k != "test_accuracy_change_pp"} for r in runs]
  for run in runs:
    if run["seed"] in baselines:  # The same seed's baseline.
      run["test_accuracy_change_pp"] = 100 * (run["test_accuracy"]
                                              - baselines[run["seed"]]["test_accuracy"])
  best = max((r for r in runs if r["kind"] not in NOT_PRUNED
              and r["macs_kept_fraction"] <= TARGET_MACS),
             key=lambda r: r["val_accuracy"], default=None)
  results = {"command": command, "dataset": runs[0]["dataset"] if runs else None,
             "runs": runs, "unfinished": list(unfinished),
             "best_trade_off": best["name"] if best else None}
  if any(r["seed"] is not None for r in runs):
    results["groups"] = seed_groups(runs)
  return results


def seed_groups(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """The runs that differ only in their seed, as one row each: means, spreads, and each pruned
  group's paired difference to the control (or, without one, the baseline) of the same seeds."""
  groups: dict[str, list[dict[str, Any]]] = {}
  for run in runs:
    groups.setdefault(run["name"].rsplit("_seed", 1)[0], []).append(run)
  reference = "control" if "control" in groups else "baseline"
  by_seed = {r["seed"]: r["test_accuracy"] for r in groups.get(reference, [])}
  rows = []
  for name, members in groups.items():
    row = {"name": name, "kind": members[0]["kind"], "target": members[0]["target"],
           "target_kind": members[0]["target_kind"], "lambda_l0": members[0]["lambda_l0"],
           "seeds": [r["seed"] for r in members]}
    for key in ("test_accuracy", "val_accuracy", "macs_kept_fraction", "params_kept_fraction"):
      row[key] = stats.spread([r[key] for r in members])._asdict()
    paired = [r for r in members if r["seed"] in by_seed]
    if name != reference and len(paired) >= 2:
      row["versus"] = reference
      row["paired_difference"] = stats.paired_interval(
          [r["test_accuracy"] for r in paired], [by_seed[r["seed"]] for r in paired])._asdict()
    rows.append(row)
  return rows


def _lambda(run: dict[str, Any]) -> str:
  return "-" if run["lambda_l0"] is None else f"{run['lambda_l0']:g}"


def _target(run: dict[str, Any]) -> str:
  """'50% MACs' for a run pruned to a budget; '-' for the rest."""
  if run.get("target") is None:
    return "-"
  return f"{100 * run['target']:g}% {COST_NAMES[run['target_kind']]}"


def _hours_or_minutes(seconds: float) -> str:
  return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def table_markdown(results: dict[str, Any]) -> str:
  """The runs as a markdown table, with the command that made them and the best trade-off."""
  lines = [f"# L0 sweep on {results['dataset']}", "", f"`{results['command']}`", "",
           "| run | lambda_l0 | test accuracy | vs baseline | target | params kept | MACs kept "
           "| epochs | train time |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in results["runs"]:
    change = r.get("test_accuracy_change_pp")
    versus = "-" if change is None or r["kind"] == "baseline" else f"{change:+.2f} pp"
    lines.append(
        f"| {r['name']} | {_lambda(r)} | {100 * r['test_accuracy']:.2f}% | {versus} | "
        f"{_target(r)} | {100 * r['params_kept_fraction']:.1f}% | "
        f"{100 * r['macs_kept_fraction']:.1f}% | "
        f"{r['epochs']} | {_hours_or_minutes(r['train_seconds'])} |")
  best = next((r for r in results["runs"] if r["name"] == results["best_trade_off"]), None)
  lines.append("")
  if best:
    lines.append(f"Best trade-off, chosen by validation accuracy among the pruned runs with at "
                 f"most {TARGET_MACS:.0%} of the MACs: {best['name']} (validation "
                 f"{100 * best['val_accuracy']:.2f}%), {100 * best['macs_kept_fraction']:.1f}% of "
                 f"the MACs and {100 * best['params_kept_fraction']:.1f}% of the parameters at "
                 f"{100 * best['test_accuracy']:.2f}% test accuracy.")
  else:
    lines.append(f"No pruned run has at most {TARGET_MACS:.0%} of the MACs.")
  if results.get("groups"):
    lines += ["", *groups_markdown(results["groups"])]
  total = sum(r["train_seconds"] for r in results["runs"])
  lines += ["", f"Train time: the sum of a run's epoch times in its history.jsonl; "
            f"{_hours_or_minutes(total)} for these {len(results['runs'])} runs."]
  if results["unfinished"]:
    lines += ["", f"Not finished: {', '.join(results['unfinished'])}."]
  return "\n".join(lines) + "\n"


def _mean_sd(spread: dict[str, float], scale: float = 100, unit: str = "%") -> str:
  sd = "-" if spread["sd"] != spread["sd"] else f"{scale * spread['sd']:.2f}"  # NaN: one seed
  return f"{scale * spread['mean']:.2f}{unit} +- {sd}"


def groups_markdown(groups: Sequence[dict[str, Any]]) -> list[str]:
  """Mean +- sample standard deviation over seeds, and paired differences with 95% intervals."""
  lines = ["## Over seeds", "",
           "Mean +- sample standard deviation over the seeds. Paired difference: the test "
           "accuracy minus that of the same seed's control (or baseline), its mean and 95% "
           "interval (Student's t over the seeds).", "",
           "| runs | seeds | test accuracy | MACs kept | params kept | paired difference | vs |",
           "|---|---|---:|---:|---:|---:|---|"]
  for g in groups:
    paired = g.get("paired_difference")
    difference = ("-" if not paired else
                  f"{100 * paired['mean']:+.2f} pp [{100 * paired['low']:+.2f}, "
                  f"{100 * paired['high']:+.2f}]")
    lines.append(f"| {g['name']} | {','.join(map(str, g['seeds']))} | "
                 f"{_mean_sd(g['test_accuracy'])} | {_mean_sd(g['macs_kept_fraction'])} | "
                 f"{_mean_sd(g['params_kept_fraction'])} | {difference} | {g.get('versus', '-')} |")
  return lines


def _points(results: dict[str, Any], key: str) -> list[dict[str, Any]]:
  """What the front plots: each run, or with seeds each group's means and spreads."""
  if not results.get("groups"):
    return [dict(r, x=100 * r[key], y=100 * r["test_accuracy"], xerr=0.0, yerr=0.0)
            for r in results["runs"]]
  sd = lambda spread: 0.0 if spread["sd"] != spread["sd"] else 100 * spread["sd"]
  return [dict(g, x=100 * g[key]["mean"], y=100 * g["test_accuracy"]["mean"], xerr=sd(g[key]),
               yerr=sd(g["test_accuracy"])) for g in results["groups"]]


def front_figure(results: dict[str, Any]) -> Figure:
  """Test accuracy against kept MACs and against kept parameters, the baseline's level marked.

  With seeds, each point is a group's mean, its error bars one standard deviation.
  """
  fig = Figure(figsize=(11, 5), layout="constrained")
  axes = fig.subplots(1, 2, sharey=True)
  for ax, key, what in ((axes[0], "macs_kept_fraction", "MACs"),
                        (axes[1], "params_kept_fraction", "parameters")):
    points = _points(results, key)
    for kind in KINDS:
      runs = sorted((p for p in points if p["kind"] == kind), key=lambda p: p["x"])
      if not runs:
        continue
      if kind == "baseline":
        ax.axhline(float(np.mean([p["y"] for p in runs])), color="k", lw=0.6, ls="--")
      ax.errorbar([p["x"] for p in runs], [p["y"] for p in runs],
                  xerr=[p["xerr"] for p in runs], yerr=[p["yerr"] for p in runs],
                  marker=MARKERS[kind], color=COLORS[kind], ms=12 if kind == "baseline" else 6,
                  lw=0.8, capsize=2, label=LABELS[kind])
      # A lambda says what made the point; a budget's point sits at its cost already, and the
      # runs at one budget would write it over each other.
      for p in (p for p in runs if p["lambda_l0"] is not None):
        ax.annotate(_lambda(p), (p["x"], p["y"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7, color=COLORS[kind])
    if key == "macs_kept_fraction":
      ax.axvline(100 * TARGET_MACS, color="k", lw=0.6, ls=":",
                 label=f"target: at most {TARGET_MACS:.0%} of the MACs")
    ax.set(xlabel=f"{what} kept (%)", xlim=(0, 105))
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("test accuracy (%)")
  # Below the axes, where it hides no run.
  fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=8)
  over = " (means over seeds, +- one sd)" if results.get("groups") else ""
  labels = (" (labels: lambda_l0)" if any(r["lambda_l0"] is not None for r in results["runs"])
            else "")
  fig.suptitle(f"{results['dataset']}: test accuracy against cost{over}{labels}", fontsize=10)
  return fig


def write_results(sweep_dir: pathlib.Path, results: dict[str, Any]) -> None:
  """results.json, results.md and front.png, rewritten from the runs' files on every sweep."""
  workdirs.write_text_atomically(sweep_dir / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
  workdirs.write_text_atomically(sweep_dir / TABLE_FILE, table_markdown(results))
  if results["runs"]:
    analysis.save_figure(front_figure(results), sweep_dir / FRONT_FILE)


def sweep(sweep_dir: pathlib.Path, members: Sequence[Member], command: str) -> dict[str, Any]:
  """Runs every unfinished member of `plan` in turn, then writes the results; returns them."""
  start = time.monotonic()
  finished = [run_member(m, sweep_dir) for m in members]
  results = collect(sweep_dir, members, command)
  write_results(sweep_dir, results)
  logging.info("%s: %d of %d runs finished (this invocation took %s); %s, %s and %s written",
               sweep_dir, sum(finished), len(members), _hours_or_minutes(time.monotonic() - start),
               RESULTS_FILE, TABLE_FILE, FRONT_FILE)
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
    members = plan(sweep_dir, _floats("scratch_lambdas", FLAGS.scratch_lambdas),
                   _floats("finetune_lambdas", FLAGS.finetune_lambdas), parse_settings(argv[1:]),
                   _floats("retrain_lambdas", FLAGS.retrain_lambdas),
                   [(kind, target) for kind in config_lib.TARGET_KINDS
                    for target in _floats(f"target_{kind}", FLAGS[f"target_{kind}"].value)],
                   FLAGS.retrain_budgets, scratch_budgets=FLAGS.scratch_budgets,
                   masks=FLAGS.masks, control=FLAGS.control, seeds=_seeds(FLAGS.seeds))
    for member in members:  # Every config as main.py would check it, before anything is written.
      member.check(sweep_dir)
    with locking.held(str(sweep_dir), "--sweep_dir"):
      results = sweep(sweep_dir, members,
                      shlex.join(["python", "-m", "l0jax.sweep", *sys.argv[1:]]))
  if results["unfinished"]:
    sys.exit(1)


if __name__ == "__main__":
  # Flags the sweep does not know are the members' settings, handed to `main`.
  app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, known_only=True))
