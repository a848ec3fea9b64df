"""What a run's gates did: figures and a short summary in WORKDIR/analysis/.

`analyze(workdir)` reads only what training and testing left in the workdir
(through l0jax/workdirs.py): config.json, history.jsonl (with every gate's
log_alpha per epoch) and test_metrics.json when it was tested at the same
checkpoint (best or last); otherwise that checkpoint's costs are counted from
the gates its epoch's record holds. No data is loaded and no network is
built. A gated layer is named as the cost accounting and `--mode=test` name
it (the layer whose output channels its gate decides: `block1/branch3`, not
its gate's `block1/3x3`, which history.jsonl keys by). Epoch 0 is the start
of training, before the first epoch. Figures are saved by plots.py.
"""

from typing import Any, Mapping, NamedTuple, Sequence

import ml_collections
import numpy as np
from etils import epath
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from l0jax import accounting, budget, checkpoints, data, gates, networks, plots, workdirs
from l0jax import config as config_lib
from l0jax import graph as graph_lib
from l0jax.gates import OPEN_AT, PRUNE_AT
from l0jax.errors import UserError

SUMMARY_FILE = "summary.md"
STATES = ("pruned", "undecided", "open")
STATE_COLORS = {"pruned": "tab:gray", "undecided": "tab:orange", "open": "tab:blue"}


def channel_graph(config: ml_collections.ConfigDict) -> graph_lib.Graph:
  """The channel graph of the run's network, from its config alone."""
  return networks.channel_graph(config, *data.image_shape_and_classes(config))[0]


def checkpoint_metrics(workdir: epath.Path, checkpoint: str, graph: graph_lib.Graph,
                       history: Sequence[dict]) -> tuple[dict[str, Any], bool]:
  """(test_metrics.json, True) if tested at `checkpoint` (best or last); else that checkpoint's
  costs, counted from the gates its epoch's record holds, and False."""
  metrics = workdirs.read_test_metrics(workdir)
  if metrics is not None and metrics.get("checkpoint", "best") == checkpoint:
    return metrics, True
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


def starting_log_alphas(config: ml_collections.ConfigDict,
                        first: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The gates at epoch 0, by gate, given those at the first epoch's end.

  Gates that train start at droprate_init's log_alpha (the mean the
  initialiser draws around, with a spread of 0.01); fixed ones (retraining, a
  mask) are all along what the first epoch ended with.
  """
  if not config.train_gates:
    return dict(first)
  return {name: np.full_like(la, gates.initial_log_alpha(config.droprate_init))
          for name, la in first.items()}


class GatesPerEpoch(NamedTuple):
  """The test-time gates at the start and at the end of every epoch of the history."""

  epochs: np.ndarray  # 0 (the start), then each epoch's number
  log_alphas: list[dict[str, np.ndarray]]  # by gated layer's name
  states: dict[str, np.ndarray]  # the share of the gates in each of STATES
  costs: dict[str, np.ndarray]  # the kept fraction of the 'params' and of the 'macs'


def gates_per_epoch(history: Sequence[dict], config: ml_collections.ConfigDict,
                    graph: graph_lib.Graph) -> GatesPerEpoch:
  """What the gates of a gated run kept from its start to each epoch's end."""
  by_gate = [_arrays(h["log_alpha"]) for h in history]
  by_gate.insert(0, starting_log_alphas(config, by_gate[0]))
  every = np.array([np.concatenate(list(las.values())) for las in by_gate])
  kept = [accounting.kept_fractions(graph, accounting.deterministic_kept(las)) for las in by_gate]
  layer = {g.name: graph.gated_layer(g.name).name for g in graph.gates}
  return GatesPerEpoch(np.concatenate([[0], _epochs(history)]),
                       [{layer[name]: la for name, la in las.items()} for las in by_gate],
                       {state: m.mean(axis=1) for state, m in gate_states(every).items()},
                       {kind: np.array([k[kind] for k in kept]) for kind in ("params", "macs")})


def gate_states(log_alpha: np.ndarray) -> dict[str, np.ndarray]:
  """Masks of the pruned, undecided and open gates.

  Taken from the test-time gate itself, not from the thresholds, so that they
  agree exactly with the cost accounting.
  """
  z = np.asarray(gates.test_gate(np.asarray(log_alpha, np.float32)))
  return {"pruned": z == 0, "undecided": (z > 0) & (z < 1), "open": z == 1}


def _epochs(history: Sequence[dict]) -> np.ndarray:
  """Each record's epoch, counted from 1 at the first one's end (0 is the start)."""
  return np.array([h["epoch"] + 1 for h in history])


def _epoch_axis(ax, num_epochs: int) -> None:
  """Whole epochs on the x axis, from the start of training (0) to the last epoch's end."""
  ax.set_xlim(-0.04 * num_epochs, 1.04 * num_epochs)
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _mark_thresholds(ax, vertical: bool) -> None:
  """The undecided band between PRUNE_AT and OPEN_AT, edges dashed."""
  span, line = (ax.axvspan, ax.axvline) if vertical else (ax.axhspan, ax.axhline)
  span(PRUNE_AT, OPEN_AT, color=STATE_COLORS["undecided"], alpha=0.07, lw=0)
  line(PRUNE_AT, color="k", ls="--", lw=0.8, label=f"pruned at or below -ln 11 = {PRUNE_AT:.2f}")
  line(OPEN_AT, color="k", ls=":", lw=0.8, label=f"fully open at or above ln 11 = {OPEN_AT:.2f}")


def log_alpha_figure(log_alphas: dict[str, np.ndarray], title: str) -> Figure:
  """A strip plot: every gate's log_alpha, one row per gated layer, coloured by its state."""
  names = list(log_alphas)
  fig = Figure(figsize=(9, 1.2 + 0.24 * len(names)), layout="constrained")
  ax = fig.add_subplot()
  _mark_thresholds(ax, vertical=True)
  jitter = np.random.default_rng(0)
  ticks = []
  for row, name in enumerate(names):
    la = log_alphas[name]
    y = row + jitter.uniform(-0.28, 0.28, la.shape)
    states = gate_states(la)
    for state, mask in states.items():
      ax.scatter(la[mask], y[mask], s=9, color=STATE_COLORS[state], lw=0,
                 label=state if row == 0 else None)
    ticks.append(f"{name} ({states['pruned'].sum()}/{la.size} pruned)")
  ax.set_yticks(range(len(names)), ticks, fontsize=7)
  ax.set_ylim(len(names) - 0.5, -0.5)
  ax.set_xlabel("log_alpha")
  fig.suptitle(title, fontsize=10)  # above the legend, which sits above the axes
  ax.legend(loc="lower left", bbox_to_anchor=(0, 1.02), ncol=5, fontsize=7, frameon=False,
            markerscale=2)
  ax.grid(axis="x", alpha=0.3)
  return fig


def _group(name: str) -> tuple[str, str]:
  """(panel, label) of a gated layer: its name split at the first "/" (a GoogleNet's block, a
  ResNet's stage); a name without one (a VGG's) goes to the panel of every gate."""
  group, slash, rest = name.partition("/")
  return (group, rest) if slash else ("", name)


def log_alpha_trajectory_figure(per_epoch: GatesPerEpoch, marked_epoch: int,
                                checkpoint: str) -> Figure:
  """log_alpha of every gate from the start over the epochs, one colour per gated layer, one
  panel per group of layers (`_group`), in network order."""
  epochs = per_epoch.epochs
  groups = {}
  for name in per_epoch.log_alphas[0]:
    groups.setdefault(_group(name)[0], []).append(name)
  cols = min(4, len(groups))
  rows = -(-len(groups) // cols)
  fig = Figure(figsize=(14, 3.2 * rows + 0.6), layout="constrained")
  axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
  for ax, (group, names) in zip(axes, groups.items()):
    _mark_thresholds(ax, vertical=False)
    for color, name in enumerate(names):
      values = np.array([las[name] for las in per_epoch.log_alphas])  # [epochs, channels]
      for j, channel in enumerate(values.T):
        ax.plot(epochs, channel, color=f"C{color}", lw=0.6, alpha=0.5,
                label=_group(name)[1] if j == 0 else None)
    ax.axvline(marked_epoch, color="k", lw=0.6, alpha=0.4)
    ax.set_title(group or "every gate", fontsize=9)
    ax.grid(alpha=0.3)
    _epoch_axis(ax, epochs[-1])
  for ax in axes[len(groups):]:
    ax.set_visible(False)
  for ax in axes[::cols]:
    ax.set_ylabel("log_alpha")
  for ax in axes[-cols:]:
    ax.set_xlabel("epoch")
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8,
             frameon=False)
  fig.suptitle(f"log_alpha of every gate at the start (epoch 0) and at each epoch's end "
               f"(thin grey line: {checkpoint} checkpoint)", fontsize=10)
  return fig


def channels_figure(layers: Sequence[dict], title: str) -> Figure:
  """Per layer: kept and full output channels, and the MACs they imply."""
  x = np.arange(len(layers))
  fig = Figure(figsize=(15, 7.5), layout="constrained")
  top, bottom = fig.subplots(2, 1, sharex=True)
  for ax, full, kept, ylabel in ((top, "c_out", "kept_out", "output channels"),
                                 (bottom, "macs_full", "macs", "MACs")):
    ax.bar(x, [l[full] for l in layers], color="0.85", label="full")
    ax.bar(x, [l[kept] for l in layers], width=0.5, color="tab:blue", label="kept")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
  bottom.set_xticks(x, [l["name"] for l in layers], rotation=90, fontsize=7)
  bottom.set_xlim(-0.7, len(layers) - 0.3)
  top.set_title(f"{title} (grey: full, blue: kept)", fontsize=10)
  return fig


def trajectories_figure(history: Sequence[dict], marked_epoch: int, checkpoint: str,
                        l0_title: str, per_epoch: GatesPerEpoch | None,
                        checkpoint_macs: float) -> Figure:
  """Per epoch: accuracy and cross-entropy; with gates, the L0 term and what is kept too.

  What is kept is the test-time network's at each epoch's end (and at the
  start), as `--mode=test` counts it, beside the training's epoch means of
  the expected cost; `checkpoint_macs` is the checkpoint's kept fraction of
  the MACs. Points are marked, so that a run of a single epoch still shows.
  """
  epochs = _epochs(history)
  series = lambda key: np.array([h[key] for h in history])
  dots = dict(marker=".", ms=4)
  mosaic = ([["accuracy", "loss", "l0"], ["kept", "states", "states"]] if per_epoch
            else [["accuracy", "loss"]])
  fig = Figure(figsize=(14 if per_epoch else 10, 7.5 if per_epoch else 3.8),
               layout="constrained")
  ax = fig.subplot_mosaic(mosaic)
  ax["accuracy"].plot(epochs, 100 * series("train_accuracy"), label="train (epoch mean)", **dots)
  ax["accuracy"].plot(epochs, 100 * series("val_accuracy"), label="validation", **dots)
  ax["accuracy"].set(title="accuracy", ylabel="%")
  ax["loss"].plot(epochs, series("train_cross_entropy"), label="train (epoch mean)", **dots)
  ax["loss"].plot(epochs, series("val_loss"), label="validation", **dots)
  ax["loss"].set(title="cross-entropy")
  if per_epoch:
    ax["l0"].plot(epochs, series("train_l0"), color="tab:red", **dots)
    ax["l0"].set(title=l0_title)
    _kept_panel(ax["kept"], history, per_epoch, marked_epoch, checkpoint, checkpoint_macs)
    ax["states"].stackplot(per_epoch.epochs,
                           *(100 * per_epoch.states[s] for s in STATES),
                           labels=[f"{s} (test-time gate {g})" for s, g in
                                   zip(STATES, ("= 0", "in (0, 1)", "= 1"))],
                           colors=[STATE_COLORS[s] for s in STATES], alpha=0.8)
    ax["states"].set(title="gates by state at each epoch's end", ylabel="% of gates",
                     ylim=(0, 100))
  for a in ax.values():
    a.axvline(marked_epoch, color="k", lw=0.6, alpha=0.4)
    a.set_xlabel("epoch")
    _epoch_axis(a, len(history))
    a.grid(alpha=0.3)
    if a.get_legend_handles_labels()[0]:
      a.legend(fontsize=7)
  fig.suptitle(f"training per epoch, from its start at epoch 0 (thin grey line: {checkpoint} "
               "checkpoint)", fontsize=10)
  return fig


def _kept_panel(ax, history: Sequence[dict], per_epoch: GatesPerEpoch, marked_epoch: int,
                checkpoint: str, checkpoint_macs: float) -> None:
  """The test-time network's open gates and kept cost (solid), the expected cost (dashed)."""
  dots = dict(marker=".", ms=4)
  ax.plot(per_epoch.epochs, 100 * (per_epoch.states["open"] + per_epoch.states["undecided"]),
          color="tab:blue", label="open gates (test-time gate > 0)", **dots)
  for kind, color, what in (("params", "tab:orange", "parameters"),
                            ("macs", "tab:green", "MACs")):
    ax.plot(per_epoch.epochs, 100 * per_epoch.costs[kind], color=color,
            label=f"{what} kept by the test-time network", **dots)
    ax.plot(_epochs(history), 100 * np.array([h[f"train_expected_{kind}_kept"] for h in history]),
            color=color, ls="--", lw=0.8,
            label=f"expected {what} kept under the gate noise (epoch mean)")
  ax.plot(marked_epoch, 100 * checkpoint_macs, "*", color="tab:green", ms=11,
          label=f"the {checkpoint} checkpoint, as --mode=test counts it: "
          f"{_percent(checkpoint_macs)} of the MACs")
  ax.set(title="what is kept at each epoch's end", ylabel="%", ylim=(0, 105))


def budget_figure(history: Sequence[dict], marked_epoch: int, checkpoint: str, kind: str,
                  target: float, realised: np.ndarray, settled_from: int) -> Figure:
  """Per epoch: the realised (test-time) cost against the target, and the multipliers.

  `realised` is the test-time cost at the start and at the end of every epoch.
  """
  epochs = _epochs(history)
  series = lambda key: np.array([h[key] for h in history])
  what = "MACs" if kind == "macs" else "parameters"
  dots = dict(marker=".", ms=5)
  fig = Figure(figsize=(12, 4.2), layout="constrained")
  cost, multipliers = fig.subplots(1, 2)
  cost.axhspan(100 * target - 2, 100 * target + 2, color="tab:green", alpha=0.12, lw=0,
               label="target +- 2 pp")
  cost.plot(epochs, 100 * series("train_target"), color="k", ls="--",
            label="t, the schedule's target (epoch mean)", **dots)
  cost.plot(epochs, 100 * series(f"train_expected_{kind}_kept"), color="tab:orange",
            label="expected cost under the gate noise (epoch mean)", **dots)
  cost.plot(epochs, 100 * series("train_cost"), color="tab:purple", lw=0.8,
            label="c, the cost the constraint reads (epoch mean)", **dots)
  cost.plot(np.concatenate([[0], epochs]), 100 * realised, color="tab:blue", lw=2,
            label="realised: test-time cost at the epoch's end", **dots)
  cost.set(title=f"{what} kept against the target", ylabel="%", ylim=(0, 105))
  multipliers.plot(epochs, series("train_l1"), label="l1", **dots)
  multipliers.plot(epochs, series("train_l2"), label="l2", **dots)
  multipliers.set(title="Lagrange multipliers (epoch mean)")
  for ax in (cost, multipliers):
    ax.axvline(marked_epoch, color="k", lw=0.6, alpha=0.4)
    if settled_from < len(history):  # from the start of the first settled epoch
      ax.axvspan(settled_from, len(history), color="0.5", alpha=0.12, lw=0,
                 label="gates settled for the budget, fixed")
    ax.set_xlabel("epoch")
    _epoch_axis(ax, len(history))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(f"pruning to {100 * target:g}% of the {what} (thin grey line: {checkpoint} "
               "checkpoint)", fontsize=10)
  return fig


def _percent(x: float) -> str:
  return f"{100 * x:.1f}%"


def l0_panel_title(config: ml_collections.ConfigDict) -> str:
  """The L0 panel's title, in two lines: one is too wide for a third of the figure."""
  if not (config.use_gate and config.train_gates):
    return "L0 term\n(not in the loss: gates fixed)"
  if budget.target_of(config):
    return "L0 term, in the loss as the Lagrangian\nl1 (c - t) + l2 (c - t)^2"
  return f"L0 term\n(times lambda_l0 = {config.lambda_l0:g} in the loss)"


def _travel_lines(config: ml_collections.ConfigDict, history: Sequence[dict]) -> list[str]:
  """For a budget run whose gates settled: how far training had moved them by then."""
  settled = budget.settle_epoch(config)
  before = next((h for h in history if h["epoch"] == settled - 1), None)
  if not (budget.target_of(config) and config.train_gates and before
          and any(h["epoch"] >= settled for h in history)):
    return []
  travel, _ = budget.gate_travel(before["log_alpha"], config.droprate_init)
  return ["", f"The gates settled for the budget at the start of epoch {settled + 1}: "
          f"{travel}."]


def summary_markdown(workdir: epath.Path, config: ml_collections.ConfigDict,
                     history: Sequence[dict], checkpoint: str, chosen: dict,
                     metrics: dict, tested: bool, log_alphas: dict[str, np.ndarray],
                     layer_states: dict[str, dict[str, int]], total: dict[str, int],
                     figures: Sequence[str]) -> str:
  """The run in a few lines: what it is, what it is worth, and what its gates decided."""
  minutes = sum(h["epoch_seconds"] for h in history) / 60
  if not config.use_gate:
    kind = "without gates"
  elif budget.target_of(config):
    what, target = budget.target_of(config)
    kind = (f"with L0 gates pruned to a budget of {_percent(target)} of the "
            f"{'MACs' if what == 'macs' else 'parameters'} (realised: "
            f"{_percent(metrics[f'{what}_kept_fraction'])})")
  elif config.train_gates:
    kind = f"with L0 gates (lambda_l0 = {config.lambda_l0:g}, penalty {config.penalty})"
  else:
    kind = f"retrained with the gates of `{config.init_from}` fixed"
  test = (f"test accuracy {100 * metrics['test_accuracy']:.2f}%" if tested else
          f"not tested at its {checkpoint} checkpoint yet (`--mode=test`); the costs below are "
          "that checkpoint's")
  lines = [
      f"# Analysis of `{workdir}`", "",
      f"{config.dataset}, {config_lib.network_name(config)} at width "
      f"{config.width_multiplier:g} {kind}: "
      f"{len(history)} of {config.num_epochs} epochs, {minutes:.1f} min of training.", "",
      f"{checkpoint.capitalize()} checkpoint: epoch {chosen['epoch'] + 1} "
      f"(step {chosen['step']}), "
      f"validation accuracy {100 * chosen['val_accuracy']:.2f}%; {test}.", "",
      "| | full | kept | kept |", "|---|---:|---:|---:|",
      f"| parameters | {metrics['params_full']:,} | {metrics['params_kept']:,} | "
      f"{_percent(metrics['params_kept_fraction'])} |",
      f"| MACs | {metrics['macs_full']:,} | {metrics['macs_kept']:,} | "
      f"{_percent(metrics['macs_kept_fraction'])} |",
  ]
  if not config.use_gate:
    lines += ["", "No gates: every channel is kept, and the figures show training only."]
  else:
    num_gates = sum(total.values())
    lines += [
        f"| gated channels | {num_gates:,} | {total['open'] + total['undecided']:,} | "
        f"{_percent((total['open'] + total['undecided']) / num_gates)} |", "",
        f"Gates at the {checkpoint} checkpoint: {total['pruned']} pruned (test-time gate 0), "
        f"{total['open']} fully open (gate 1), **{total['undecided']} undecided** (gate strictly "
        f"between 0 and 1, i.e. log_alpha in ({PRUNE_AT:.3f}, {OPEN_AT:.3f})).",
    ]
    if total["undecided"]:
      share = _percent(total["undecided"] / num_gates)
      settled = budget.settle_epoch(config)
      if budget.target_of(config) and chosen["epoch"] >= settled:
        why = (f"the budget fixed every gate from epoch {settled + 1} on (`fix_gates_after`), "
               "so these keep the scale they had learnt, and the weights trained with it")
      else:
        why = ("many of them are a sign that training stopped before the gates settled, or "
               "that the temperature keeps them from settling")
      lines += ["", f"{share} of the gates are undecided: kept, but scaled; {why}."]
    lines += _travel_lines(config, history)
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
  history = workdirs.load_history(workdir)
  graph = channel_graph(config)
  metrics, tested = checkpoint_metrics(workdir, checkpoint, graph, history)
  chosen = _record_at(history, metrics["checkpoint_step"], workdir, checkpoint)
  out = workdir / workdirs.ANALYSIS_DIR
  epoch = chosen["epoch"] + 1
  title = (f"{workdir.name}: {_percent(metrics['macs_kept_fraction'])} of the MACs and "
           f"{_percent(metrics['params_kept_fraction'])} of the parameters kept")
  per_epoch, log_alphas, figures = None, {}, {}
  if config.use_gate:
    per_epoch = gates_per_epoch(history, config, graph)
    log_alphas = per_epoch.log_alphas[history.index(chosen) + 1]
    figures["log_alpha.png"] = log_alpha_figure(
        log_alphas, f"log_alpha at the {checkpoint} checkpoint (epoch {epoch})\n{title}")
    figures["log_alpha_trajectories.png"] = log_alpha_trajectory_figure(per_epoch, epoch,
                                                                        checkpoint)
    figures["channels.png"] = channels_figure(metrics["layers"], title)
  target = budget.target_of(config)
  if target:
    figures["budget.png"] = budget_figure(history, epoch, checkpoint, *target,
                                          per_epoch.costs[target[0]],
                                          budget.settle_epoch(config))
  figures["trajectories.png"] = trajectories_figure(history, epoch, checkpoint,
                                                    l0_panel_title(config), per_epoch,
                                                    metrics["macs_kept_fraction"])
  layer_states = {name: {state: int(m.sum()) for state, m in gate_states(la).items()}
                  for name, la in log_alphas.items()}
  total = {s: sum(c[s] for c in layer_states.values()) for s in STATES}
  if workdirs.is_primary_process():  # With --multihost, the others drew the same.
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
      plots.save_figure(fig, out / name)
    workdirs.write_file(out / SUMMARY_FILE, summary_markdown(
        workdir, config, history, checkpoint, chosen, metrics, tested, log_alphas, layer_states,
        total, list(figures)))
    print(f"{out}: {', '.join(figures)} and {SUMMARY_FILE}")
  return {"tested": tested, "checkpoint_step": metrics["checkpoint_step"], "gates": total,
          "layers": layer_states, "files": [*figures, SUMMARY_FILE]}
