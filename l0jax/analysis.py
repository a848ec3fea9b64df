"""What a run's gates did: figures and a short summary in WORKDIR/analysis/.

`analyze(workdir)` reads only what training and testing left in the workdir
(through l0jax/workdirs.py): config.json, history.jsonl (with every gate's
log_alpha per epoch) and test_metrics.json when it was tested at the same
checkpoint (best or last); otherwise that checkpoint's costs are counted from
the gates its epoch's record holds. No data is loaded and no network is
built. A gated layer is named as the cost accounting and `--mode=test` name
it (the layer whose output channels its gate controls: `block1/branch3`, not
its gate's `block1/3x3`, which history.jsonl keys by). Epoch 0 is the start
of training, before the first epoch. The figures are run_figures.py's.
"""

from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np
from etils import epath

from l0jax import accounting, budgets, checkpoints, data, gates, networks, plots, run_figures
from l0jax import graphs, run_config, workdirs
from l0jax.gates import OPEN_AT, PRUNE_AT
from l0jax.errors import UserError

SUMMARY_FILE = "summary.md"


def channel_graph(config: ml_collections.ConfigDict) -> graphs.Graph:
  """The channel graph of the run's network, from its config alone."""
  return networks.channel_graph(config, *data.image_shape_and_classes(config))[0]


def checkpoint_metrics(workdir: epath.Path, checkpoint: str, graph: graphs.Graph,
                       history: Sequence[dict]) -> tuple[dict[str, Any], bool]:
  """(test_metrics.json, True) if tested at `checkpoint` (best or last); else that checkpoint's
  costs, counted from the gates its epoch's record holds, and False."""
  metrics = workdirs.read_test_metrics(workdir)
  if metrics is not None and metrics.get("checkpoint", "best") == checkpoint:
    return metrics, True
  # Orbax's: the best step is its pick among the steps on disk, which history.jsonl cannot tell.
  _, step = checkpoints.chosen_step(str(workdir), checkpoint)
  record = _record_at(history, step, workdir, checkpoint)
  log_alphas = _arrays(record.get("log_alpha", {}))
  return {"checkpoint_step": step, **accounting.report(graph, log_alphas)}, False


def _record_at(history: Sequence[dict], step: int, workdir: epath.Path, checkpoint: str) -> dict:
  """The history record of the epoch that ended at `step`, that of `checkpoint` (best or last)."""
  record = next((h for h in history if h["step"] == step), None)
  if record is None:
    raise UserError(f"{workdir / workdirs.HISTORY_FILE} has no epoch ending at the {checkpoint} "
                    f"checkpoint's step {step}")
  return record


def _arrays(log_alphas: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
  return {name: np.asarray(v, np.float32) for name, v in log_alphas.items()}


def starting_log_alphas(config: ml_collections.ConfigDict, plan: run_config.GatePlan,
                        first: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The gates at epoch 0, by gate, given those at the first epoch's end.

  Gates that train start at droprate_init's log_alpha (the mean the
  initialiser draws around, with a spread of 0.01); fixed ones (retraining, a
  mask) are all along what the first epoch ended with.
  """
  if plan.fixed_from_start:
    return dict(first)
  return {name: np.full_like(la, gates.initial_log_alpha(config.droprate_init))
          for name, la in first.items()}


def gates_per_epoch(history: Sequence[dict], config: ml_collections.ConfigDict,
                    plan: run_config.GatePlan, graph: graphs.Graph) -> run_figures.GatesPerEpoch:
  """What the gates of a gated run kept from its start to each epoch's end."""
  by_gate = [_arrays(h["log_alpha"]) for h in history]
  by_gate.insert(0, starting_log_alphas(config, plan, by_gate[0]))
  every = np.array([np.concatenate(list(las.values())) for las in by_gate])
  kept = [accounting.kept_fractions(graph, accounting.deterministic_kept(las)) for las in by_gate]
  layer = {g.name: graph.gated_layer(g.name).name for g in graph.gates}
  return run_figures.GatesPerEpoch(np.concatenate([[0], run_figures.record_epochs(history)]),
                       [{layer[name]: la for name, la in las.items()} for las in by_gate],
                       {state: m.mean(axis=1)
                        for state, m in run_figures.gate_states(every).items()},
                       {kind: np.array([k[kind] for k in kept]) for kind in ("params", "macs")})


def l0_panel_title(plan: run_config.GatePlan) -> str:
  """The L0 panel's title, in two lines: one is too wide for a third of the figure."""
  if plan.gates == run_config.BUDGET:
    return "L0 term, in the loss as the Lagrangian\nl1 (c - t) + l2 (c - t)^2"
  if plan.gates == run_config.LAMBDA:
    return f"L0 term\n(times lambda_l0 = {plan.lambda_l0:g} in the loss)"
  return "L0 term\n(not in the loss: gates fixed)"


def _settling_lines(config: ml_collections.ConfigDict, plan: run_config.GatePlan,
                    history: Sequence[dict]) -> list[str]:
  """For a budget run whose gates settled: how far training had moved them by then, how far
  the controller had brought the cost, and what settling did to validation."""
  if plan.gates != run_config.BUDGET:
    return []
  settled = plan.settle_epoch
  before = next((h for h in history if h["epoch"] == settled - 1), None)
  after = next((h for h in history if h["epoch"] == settled), None)
  if not (before and after):
    return []
  travel, _ = budgets.gate_travel(before["log_alpha"], config.droprate_init)
  kind, target = plan.target
  cost = before[f"train_test_time_{kind}_kept"]
  closed, opened = budgets.channels_changed(before["log_alpha"], after["log_alpha"])
  # The budget's schedule is not read here, only its target and its multipliers' cost.
  off_target = budgets.settling_off_target(
      cost, budgets.Budget.from_config(config, plan, epoch_steps=0), closed, opened,
      bounded=bool(config.log_alpha_bound))
  return ["", f"The gates settled for the budget at the start of epoch {settled + 1}: "
          f"{travel}. The test-time network kept {run_figures.percent(cost)} of the "
          f"{'MACs' if kind == 'macs' else 'parameters'} then (target "
          f"{run_figures.percent(target)}); validation accuracy went from "
          f"{100 * before['val_accuracy']:.2f}% (epoch {settled}) to "
          f"{100 * after['val_accuracy']:.2f}% (epoch {settled + 1})."
          + (f" {off_target}." if off_target else "")]


def summary_markdown(workdir: epath.Path, config: ml_collections.ConfigDict,
                     plan: run_config.GatePlan, history: Sequence[dict], checkpoint: str,
                     chosen: dict, metrics: dict, tested: bool, log_alphas: dict[str, np.ndarray],
                     layer_states: dict[str, dict[str, int]], total: dict[str, int],
                     figures: Sequence[str]) -> str:
  """The run in a few lines: what it is, what it is worth, and what its gates decided."""
  minutes = sum(h["epoch_seconds"] for h in history) / 60
  if plan.gates == run_config.NO_GATES:
    kind = "without gates"
  elif plan.target:
    what, fraction = plan.target
    kind = (f"with L0 gates pruned to a budget of {run_figures.percent(fraction)} of the "
            f"{'MACs' if what == 'macs' else 'parameters'} (realised: "
            f"{run_figures.percent(metrics[f'{what}_kept_fraction'])})")
  elif plan.gates == run_config.LAMBDA:
    kind = f"with L0 gates (lambda_l0 = {plan.lambda_l0:g}, penalty {plan.penalty})"
  else:
    kind = f"retrained with the gates of `{config.init_from}` fixed"
  test = (f"test accuracy {100 * metrics['test_accuracy']:.2f}%" if tested else
          f"not tested at its {checkpoint} checkpoint yet (`--mode=test`); the costs below are "
          "that checkpoint's")
  lines = [
      f"# Analysis of `{workdir}`", "",
      f"{config.dataset}, {run_config.network_name(config)} at width "
      f"{config.width_multiplier:g} {kind}: "
      f"{len(history)} of {config.num_epochs} epochs, {minutes:.1f} min of training.", "",
      f"{checkpoint.capitalize()} checkpoint: epoch {chosen['epoch'] + 1} "
      f"(step {chosen['step']}), "
      f"validation accuracy {100 * chosen['val_accuracy']:.2f}%; {test}.", "",
      "| | full | kept | kept |", "|---|---:|---:|---:|",
      f"| parameters | {metrics['params_full']:,} | {metrics['params_kept']:,} | "
      f"{run_figures.percent(metrics['params_kept_fraction'])} |",
      f"| MACs | {metrics['macs_full']:,} | {metrics['macs_kept']:,} | "
      f"{run_figures.percent(metrics['macs_kept_fraction'])} |",
  ]
  if not config.use_gate:
    lines += ["", "No gates: every channel is kept, and the figures show training only."]
  else:
    num_gates = sum(total.values())
    lines += [
        f"| gated channels | {num_gates:,} | {total['open'] + total['undecided']:,} | "
        f"{run_figures.percent((total['open'] + total['undecided']) / num_gates)} |", "",
        f"Gates at the {checkpoint} checkpoint: {total['pruned']} pruned (test-time gate 0), "
        f"{total['open']} fully open (gate 1), **{total['undecided']} undecided** (gate strictly "
        f"between 0 and 1, i.e. log_alpha in ({PRUNE_AT:.3f}, {OPEN_AT:.3f})).",
    ]
    if total["undecided"]:
      share = run_figures.percent(total["undecided"] / num_gates)
      settled = plan.settle_epoch
      if plan.gates == run_config.BUDGET and chosen["epoch"] >= settled:
        why = (f"the budget fixed every gate from epoch {settled + 1} on (`fix_gates_after`), "
               "so these keep the scale they had learnt, and the weights trained with it")
      else:
        why = ("many of them are a sign that training stopped before the gates settled, or "
               "that the temperature keeps them from settling")
      lines += ["", f"{share} of the gates are undecided: kept, but scaled; {why}."]
    lines += _settling_lines(config, plan, history)
    lines += ["", "| gated layer | channels | pruned | undecided | open | log_alpha min | median "
              "| max |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, counts in layer_states.items():
      la = log_alphas[name]
      lines.append(f"| {name} | {la.size} | {counts['pruned']} | {counts['undecided']} | "
                   f"{counts['open']} | {la.min():.2f} | {np.median(la):.2f} | {la.max():.2f} |")
  lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
  return "\n".join(lines) + "\n"


def analyze(workdir: str, checkpoint: str = "best") -> dict[str, Any]:
  """Writes the figures and summary.md of the run in `workdir` into WORKDIR/analysis/.

  Returns the summary's numbers: the gate counts at `checkpoint` (total and
  per gated layer), whether the run was tested, and the files written.
  """
  workdir = epath.Path(workdir)
  config = workdirs.load_config(str(workdir))
  plan = run_config.gate_plan(config)
  history = workdirs.load_history(workdir)
  graph = channel_graph(config)
  metrics, tested = checkpoint_metrics(workdir, checkpoint, graph, history)
  chosen = _record_at(history, metrics["checkpoint_step"], workdir, checkpoint)
  out = workdir / workdirs.ANALYSIS_DIR
  epoch = chosen["epoch"] + 1
  title = (f"{workdir.name}: {run_figures.percent(metrics['macs_kept_fraction'])} of the MACs and "
           f"{run_figures.percent(metrics['params_kept_fraction'])} of the parameters kept")
  per_epoch, log_alphas, figures = None, {}, {}
  if config.use_gate:
    per_epoch = gates_per_epoch(history, config, plan, graph)
    log_alphas = per_epoch.log_alphas[history.index(chosen) + 1]
    figures["log_alpha.png"] = run_figures.log_alpha_figure(
        log_alphas, f"log_alpha at the {checkpoint} checkpoint (epoch {epoch})\n{title}")
    figures["log_alpha_trajectories.png"] = run_figures.log_alpha_trajectory_figure(
        per_epoch, epoch, checkpoint)
    figures["channels.png"] = run_figures.channels_figure(metrics["layers"], title)
  if plan.gates == run_config.BUDGET:  # a mask's run has no multipliers to draw
    figures["budget.png"] = run_figures.budget_figure(history, epoch, checkpoint, *plan.target,
                                                      per_epoch.costs[plan.target.kind],
                                                      plan.settle_epoch)
  figures["trajectories.png"] = run_figures.trajectories_figure(
      history, epoch, checkpoint, l0_panel_title(plan), per_epoch,
      metrics["macs_kept_fraction"])
  layer_states = {name: {state: int(m.sum()) for state, m in run_figures.gate_states(la).items()}
                  for name, la in log_alphas.items()}
  total = {s: sum(c[s] for c in layer_states.values()) for s in run_figures.STATES}
  if workdirs.is_primary_process():  # With --multihost, the others drew the same.
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
      plots.save_figure(fig, out / name)
    workdirs.write_file(out / SUMMARY_FILE, summary_markdown(
        workdir, config, plan, history, checkpoint, chosen, metrics, tested, log_alphas,
        layer_states, total, list(figures)))
    print(f"{out}: {', '.join(figures)} and {SUMMARY_FILE}")
  return {"tested": tested, "checkpoint_step": metrics["checkpoint_step"], "gates": total,
          "layers": layer_states, "files": [*figures, SUMMARY_FILE]}
