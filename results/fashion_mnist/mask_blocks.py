"""Gated channels each finished mask run kept, block by block (PROTOCOL.md, amendment on arm 4).

    python results/fashion_mnist/mask_blocks.py results/fashion_mnist/runs \
        > results/fashion_mnist/mask_blocks.txt

Read from each `l1_norm_*` and `random_*` member's recorded mask (the fixed gates of its last
history line); no test number is read.
"""

import pathlib
import sys

from l0jax import workdirs

for member in sorted(pathlib.Path(sys.argv[1]).glob("*_macs*_seed*")):
  if not member.name.startswith(("l1_norm_", "random_")) or not (member / "history.jsonl").exists():
    continue
  blocks: dict[str, list[int]] = {}
  for gate, log_alpha in workdirs.load_history(member)[-1]["log_alpha"].items():
    kept = blocks.setdefault(gate.split("/")[0], [0, 0])
    kept[0] += sum(a > 0 for a in log_alpha)
    kept[1] += len(log_alpha)
  print(f"{member.name}: " + ", ".join(f"{b} {k}/{n} ({100 * k / n:.0f}%)"
                                       for b, (k, n) in blocks.items()))
