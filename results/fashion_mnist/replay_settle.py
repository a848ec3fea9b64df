"""Replays each budget run's settling with the current `budget.settle` (PROTOCOL.md, 2026-12-03).

For every `budget_*` member of a sweep folder: the gates recorded at the end of the last epoch
before settling, settled again by this checkout's code, against the gates the run recorded once
settled. Prints, per member, whether they are identical and whether each network is connected.
And for every finished mask member (`l1_norm_*`, `random_*`), whether the mask it recorded is
connected: `masks.keep_in_order` changes a mask (since 0da3106) only where it would not be.

    python results/fashion_mnist/replay_settle.py results/fashion_mnist/runs \
        > results/fashion_mnist/replay_settle.txt
"""

import pathlib
import sys

import numpy as np

from l0jax import accounting, budget, networks, workdirs
from l0jax import config as config_lib

FASHION_MNIST = ((28, 28, 1), 10)  # image shape, classes


def replay(member: pathlib.Path) -> str:
  config = workdirs.load_config(str(member))
  plan = config_lib.gate_plan(config)
  kind, target = plan.target
  graph, _ = networks.channel_graph(config, *FASHION_MNIST)
  history = workdirs.load_history(member)
  settled_at = plan.settle_epoch
  as_array = lambda record: {k: np.asarray(v, np.float32) for k, v in record["log_alpha"].items()}
  before, recorded = as_array(history[settled_at - 1]), as_array(history[settled_at])
  replayed = budget.settle(before, kind, target, graph)
  same = all(np.array_equal(replayed[k], recorded[k]) for k in recorded)

  def described(log_alphas) -> str:
    kept = accounting.deterministic_kept(log_alphas)
    return (f"{accounting.kept_fractions(graph, kept)[kind]:.4f} of the {kind}, "
            f"{'connected' if accounting.connected(graph, kept) else 'DISCONNECTED'}")

  return (f"{member.name}: {'identical' if same else 'DIFFERENT'}; "
          f"recorded {described(recorded)}; replayed {described(replayed)}")


def mask_connected(member: pathlib.Path) -> str:
  config = workdirs.load_config(str(member))
  graph, _ = networks.channel_graph(config, *FASHION_MNIST)
  log_alphas = {k: np.asarray(v, np.float32)
                for k, v in workdirs.load_history(member)[0]["log_alpha"].items()}
  connected = accounting.connected(graph, accounting.deterministic_kept(log_alphas))
  return f"{member.name}: mask {'connected' if connected else 'DISCONNECTED'}"


def main(sweep_dir: str) -> None:
  finished = lambda pattern: [m for m in sorted(pathlib.Path(sweep_dir).glob(pattern))
                              if (m / workdirs.TEST_METRICS_FILE).exists()]
  for member in finished("budget_*"):  # finished, so settled
    print(replay(member))
  for member in finished("l1_norm_*") + finished("random_*"):
    print(mask_connected(member))


if __name__ == "__main__":
  main(sys.argv[1])
