"""A sweep's plan: its members, each a main.py run with its settings, in the order they run.

Pure functions of the flags: nothing here reads or writes a file, so a plan
can be checked whole before the sweep writes anything.
"""

import dataclasses
import pathlib
import re
import sys
from typing import Sequence

from l0jax import cli, run_config
from l0jax.errors import UserError

MASKS = tuple(m for m in run_config.MASKS if m)  # kinds that are one-shot masks, same names
KINDS = ("baseline", "control", "scratch", "finetune", "budget", "retrain") + MASKS
CONFIG_FILES = {"baseline": "baseline.py", "control": "baseline.py", "scratch": "gated.py",
                "finetune": "finetune.py", "budget": "prune_to_budget.py", "retrain": "retrain.py",
                **{kind: "mask.py" for kind in MASKS}}
# Set by the sweep, per member.
SWEEP_KEYS = ("lambda_l0", "init_from", "init_checkpoint", "seed", "mask", "mask_from",
              *(f"target_{kind}" for kind in run_config.TARGET_KINDS))
# Members are tested at their last checkpoint: the network their lambda made.
# The best by validation can be one from before the gates closed.
CHECKPOINT = "last"


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
  config_file: str | None = None  # Its recipe in configs/, where not its kind's.

  def commands(self, sweep_dir: pathlib.Path) -> list[list[str]]:
    """Train (or resume), then test: the two main.py command lines."""
    repo, workdir = cli.checkout(), f"--workdir={sweep_dir / self.name}"
    main = [sys.executable, str(repo / "main.py")]
    recipe = self.config_file or CONFIG_FILES[self.kind]
    return [main + [f"--config={repo / 'configs' / recipe}", workdir,
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
              for kind in run_config.TARGET_KINDS}, "init_from": str(sweep_dir / "baseline")}
    members.append(Member(f"budget_{name}", "budget", {**settings["budget"], **own},
                          target=(cost, target), after="baseline"))
    if retrain_budgets:
      members.append(Member(f"retrain_{name}", "retrain", {
          **settings["retrain"], "init_from": str(sweep_dir / f"budget_{name}")},
                            target=(cost, target), after=f"budget_{name}"))
    if name in scratch_budgets:
      members.append(Member(f"scratch_{name}", "scratch", {
          **settings["scratch"], **{k: v for k, v in own.items() if k != "init_from"}},
                            target=(cost, target), config_file="prune_from_scratch.py"))
    for method in masks:
      mask = {"mask": method, "init_from": str(sweep_dir / "baseline")}
      # The budget run's decided gates, on the baseline's weights.
      if method in run_config.MASKS_FROM_RUN:
        members.append(Member(f"{method}_{name}", method, {
            **settings[method], **mask, "mask_from": str(sweep_dir / f"budget_{name}"),
            **{f"target_{kind}": "0.0" for kind in run_config.TARGET_KINDS}},
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
