"""How each budget run's controller reached its target, from the runs' training histories only.

For every finished `budget_*` run of protocol 2, arm 1's in runs/ and arm 1b's in bounded/: the
test-time kept fraction of the MACs at the end of each epoch (`train_test_time_macs_kept`), the
target the controller was given (`train_target`), and the validation accuracy. Draws
`controller.png`, one column per arm and budget, and prints one line per run: the cost when the
gates settled, what settling did to validation, and how much of the settled network's MACs lie
in the stem (which no gate prunes) and in the branches' 1x1 reduce layers (gated in arm 1b only),
counted from the gates of its last epoch. No test number is read (`test_metrics.json` is not
opened).

    python results/fashion_mnist_2/controller.py > results/fashion_mnist_2/controller.txt
"""

import json
import pathlib

import numpy as np
from matplotlib.figure import Figure

from l0jax import accounting, analysis, plots, run_config, workdirs

HERE = pathlib.Path(__file__).parent
ARMS = {"runs": "arm 1", "bounded": "arm 1b"}  # folder: the arm its budget runs belong to


def history(run: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def finished_budget_runs() -> dict[tuple[str, float], list[tuple[str, int, list[dict], str]]]:
  """{(folder, budget): [(run name, its first epoch with settled gates, history, where its kept
  MACs lie)]}, for the budget runs that wrote all their epochs."""
  by_budget = {}
  for folder in ARMS:
    for run in sorted((HERE / folder).glob("budget_macs*_seed*")):
      config = workdirs.load_config(str(run))
      epochs = history(run)
      if len(epochs) == config.num_epochs:
        plan = run_config.gate_plan(config)
        by_budget.setdefault((folder, plan.target[1]), []).append(
            (run.name, plan.settle_epoch, epochs, ungated_share(config, epochs[-1])))
  return by_budget


def ungated_share(config, last_epoch: dict) -> str:
  """The settled network's kept MACs in the stem and in the reduce layers."""
  graph = analysis.channel_graph(config)
  log_alphas = {name: np.asarray(v, np.float32) for name, v in last_epoch["log_alpha"].items()}
  costs = accounting.count(graph, accounting.deterministic_kept(log_alphas))
  total = sum(c.macs for c in costs)
  stem = sum(c.macs for c in costs if c.name == "stem")
  reduce = sum(c.macs for c in costs if c.name.endswith("_reduce"))
  gated = "gated" if config.get("gate_reduce") else "ungated"
  return (f"of its {total:,} kept MACs, the stem's {100 * stem / total:.0f}% and the {gated} "
          f"reduce layers' {100 * reduce / total:.0f}%")


def main() -> None:
  by_budget = finished_budget_runs()
  fig = Figure(figsize=(max(6.0, 4.5 * len(by_budget)), 6.5))
  axes = fig.subplots(2, len(by_budget), squeeze=False, sharex="col", sharey="row")
  for column, ((folder, budget), runs) in enumerate(sorted(by_budget.items())):
    cost_ax, val_ax = axes[0][column], axes[1][column]
    for name, settled, epochs, share in runs:
      x = [e["epoch"] + 1 for e in epochs]
      line, = cost_ax.plot(x, [100 * e["train_test_time_macs_kept"] for e in epochs], marker="o",
                           label=name.split("_")[-1])
      val_ax.plot(x, [100 * e["val_accuracy"] for e in epochs], marker="o", color=line.get_color())
      before, after = epochs[settled - 1], epochs[settled]
      print(f"{folder}/{name}: MACs kept {100 * before['train_test_time_macs_kept']:.1f}% when "
            f"the gates settled after epoch {settled} (target {100 * budget:g}%); validation "
            f"{100 * before['val_accuracy']:.2f}% -> {100 * after['val_accuracy']:.2f}% "
            f"(last epoch {100 * epochs[-1]['val_accuracy']:.2f}%); {share}")
    cost_ax.plot(x, [100 * e["train_target"] for e in epochs], color="k", linestyle="--",
                 label="controller's target")
    cost_ax.set_title(f"{ARMS[folder]}: budget {100 * budget:g}% of the MACs")
    cost_ax.set_ylabel("test-time MACs kept (%)")
    cost_ax.legend(fontsize="small")
    val_ax.set_ylabel("validation accuracy (%)")
    val_ax.set_xlabel("epoch")
  fig.suptitle("Protocol 2's budget runs, from their training histories:\n"
               "the controller's cost, and validation when the gates settle")
  fig.tight_layout()
  plots.save_figure(fig, pathlib.Path(__file__).parent / "controller.png")


if __name__ == "__main__":
  main()
