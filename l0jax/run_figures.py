"""The figures of one run's gates and training, as --mode=analyze draws them (plots.py says
how they are drawn). Epoch 0 is the start of training, before the first epoch.
"""

from typing import NamedTuple, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from l0jax import gates
from l0jax.gates import OPEN_AT, PRUNE_AT

STATES = ("pruned", "undecided", "open")
STATE_COLORS = {"pruned": "tab:gray", "undecided": "tab:orange", "open": "tab:blue"}


class GatesPerEpoch(NamedTuple):
  """The test-time gates at the start and at the end of every epoch of the history."""

  epochs: np.ndarray  # 0 (the start), then each epoch's number
  log_alphas: list[dict[str, np.ndarray]]  # by gated layer's name
  states: dict[str, np.ndarray]  # the share of the gates in each of STATES
  costs: dict[str, np.ndarray]  # the kept fraction of the 'params' and of the 'macs'


def gate_states(log_alpha: np.ndarray) -> dict[str, np.ndarray]:
  """Masks of the pruned, undecided and open gates.

  Taken from the test-time gate itself, not from the thresholds, so that they
  agree exactly with the cost accounting.
  """
  z = np.asarray(gates.test_gate(np.asarray(log_alpha, np.float32)))
  return {"pruned": z == 0, "undecided": (z > 0) & (z < 1), "open": z == 1}


def percent(x: float) -> str:
  return f"{100 * x:.1f}%"


def record_epochs(history: Sequence[dict]) -> np.ndarray:
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
  epochs = record_epochs(history)
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
    ax.plot(record_epochs(history),
            100 * np.array([h[f"train_expected_{kind}_kept"] for h in history]),
            color=color, ls="--", lw=0.8,
            label=f"expected {what} kept under the gate noise (epoch mean)")
  ax.plot(marked_epoch, 100 * checkpoint_macs, "*", color="tab:green", ms=11,
          label=f"the {checkpoint} checkpoint, as --mode=test counts it: "
          f"{percent(checkpoint_macs)} of the MACs")
  ax.set(title="what is kept at each epoch's end", ylabel="%", ylim=(0, 105))


def budget_figure(history: Sequence[dict], marked_epoch: int, checkpoint: str, kind: str,
                  target: float, realised: np.ndarray, settled_from: int) -> Figure:
  """Per epoch: the realised (test-time) cost against the target, and the multipliers.

  `realised` is the test-time cost at the start and at the end of every epoch.
  """
  epochs = record_epochs(history)
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
