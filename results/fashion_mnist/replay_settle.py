"""Replays each budget run's settling with the current `budget.settle` (PROTOCOL.md, 2026-12-03).

For every `budget_*` member of a sweep folder: the gates recorded at the end of the last epoch
before settling, settled again by this checkout's code, against the gates the run recorded once
settled. Prints, per member, whether they are identical and whether each network is connected.

    python results/fashion_mnist/replay_settle.py results/fashion_mnist/runs \
        > results/fashion_mnist/replay_settle.txt
"""

import pathlib
import sys

import numpy as np

from l0jax import accounting, budget, networks, workdirs

FASHION_MNIST = ((28, 28, 1), 10)  # image shape, classes


def replay(member: pathlib.Path) -> str:
  config = workdirs.load_config(str(member))
  kind, target = budget.target_of(config)
  graph, _ = networks.channel_graph(config, *FASHION_MNIST)
  history = workdirs.load_history(member)
  settled_at = budget.settle_epoch(config)
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


def main(sweep_dir: str) -> None:
  for member in sorted(pathlib.Path(sweep_dir).glob("budget_*")):
    if (member / workdirs.TEST_METRICS_FILE).exists():  # finished, so settled
      print(replay(member))


if __name__ == "__main__":
  main(sys.argv[1])
