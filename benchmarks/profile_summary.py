r"""Where a compiled step's time goes, by kind of operation, from a `jax.profiler` trace.

  python -m benchmarks.throughput --dtypes=float32 --repeats=3 --profile_dir=/tmp/profile
  python -m benchmarks.profile_summary --profile_dir=/tmp/profile      # jit_train_steps
  python -m benchmarks.profile_summary --profile_dir=/tmp/profile --module=jit_eval_step

Reads the newest `*.trace.json.gz` under `--profile_dir` that ran `--module`
(benchmarks.throughput writes one for its training calls, then one for its
evaluations) and adds up the device time of every XLA operation of `--module` (one event per operation a
call runs: a convolution, a dot, a fusion of elementwise operations, a copy);
an operation's kind is its HLO name without the number XLA appends. On the
CPU the operations of one call run on a thread pool, so the shares are of the
operations' summed time, not of the call's wall time; a loop or call around
other operations (CONTAINERS) is left out, its body's operations counted
instead. Prints one JSON object,
then a table, largest share first.
"""

import collections
import glob
import gzip
import json
import os
import re

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("profile_dir", None, "What --profile_dir of benchmarks.throughput wrote.")
flags.DEFINE_string("module", "jit_train_steps", "The compiled program to summarise.")
flags.DEFINE_integer("rows", 15, "Kinds shown in the table.")

CONTAINERS = ("while", "call", "conditional")  # their events span their bodies' events


def operation_kind(hlo_op: str) -> str:
  """`convolution.12` -> `convolution`, `loop_add_fusion.3` -> `loop_add_fusion`."""
  return re.sub(r"(\.\d+)+$", "", hlo_op)


def summarise(trace_file: str, module: str) -> dict | None:
  """Microseconds and counts of `module`'s operations, by kind; None if it did not run."""
  with gzip.open(trace_file) as f:
    events = json.load(f)["traceEvents"]
  micros, counts = collections.Counter(), collections.Counter()
  for event in events:
    args = event.get("args") or {}
    if event.get("ph") == "X" and args.get("hlo_module") == module and "hlo_op" in args:
      kind = operation_kind(args["hlo_op"])
      if kind in CONTAINERS:
        continue
      micros[kind] += event["dur"]
      counts[kind] += 1
  total = sum(micros.values())
  if not total:
    return None
  return {"trace": trace_file, "module": module, "total_ms": round(total / 1e3, 2),
          "kinds": [{"kind": k, "ms": round(us / 1e3, 2), "share": round(us / total, 4),
                     "count": counts[k]} for k, us in micros.most_common()]}


def main(argv):
  del argv
  traces = glob.glob(os.path.join(FLAGS.profile_dir, "**", "*.trace.json.gz"), recursive=True)
  if not traces:
    raise app.UsageError(f"no *.trace.json.gz under {FLAGS.profile_dir}")
  summaries = (summarise(t, FLAGS.module) for t in sorted(traces, key=os.path.getmtime,
                                                           reverse=True))
  summary = next((s for s in summaries if s), None)
  if summary is None:
    raise app.UsageError(f"no trace under {FLAGS.profile_dir} ran {FLAGS.module}")
  print(json.dumps(summary))
  print(f"\n{'operation kind':<40} {'count':>7} {'ms':>10} {'share':>7}")
  for row in summary["kinds"][:FLAGS.rows]:
    print(f"{row['kind'][:40]:<40} {row['count']:>7} {row['ms']:>10.1f} {row['share']:>7.1%}")
  print(f"{'all':<40} {'':>7} {summary['total_ms']:>10.1f}")


if __name__ == "__main__":
  flags.mark_flag_as_required("profile_dir")
  app.run(main)
