r"""Where a compiled step's time goes, by kind of operation, from a `jax.profiler` trace.

  python -m benchmarks.throughput --dtypes=float32 --repeats=3 --profile_dir=/tmp/profile
  python -m benchmarks.profile_summary --profile_dir=/tmp/profile      # jit_train_steps
  python -m benchmarks.profile_summary --profile_dir=/tmp/profile --module=jit_eval_step

  XLA_FLAGS="--xla_dump_to=/tmp/hlo --xla_dump_hlo_as_text" \
    python -m benchmarks.throughput --dtypes=float32 --repeats=3 --profile_dir=/tmp/profile
  python -m benchmarks.profile_summary --profile_dir=/tmp/profile --hlo_dir=/tmp/hlo

Reads the newest `*.trace.json.gz` under `--profile_dir` that ran `--module`
(benchmarks.throughput writes one for its training calls, then one for its
evaluations) and adds up the device time of every XLA operation of `--module` (one event per operation a
call runs: a convolution, a dot, a fusion of elementwise operations, a copy);
an operation's kind is its HLO name without the number XLA appends, or, with
`--hlo_dir` (XLA's dump of the compiled program), the JAX operation it was
made from (`SOURCE`): which convolution product, BN's sums, a pool's selects.
On the
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
flags.DEFINE_string("hlo_dir", None, "XLA's text dump of the program (--xla_dump_to): group the "
                    "operations by the JAX operation they were made from.")

CONTAINERS = ("while", "call", "conditional")  # their events span their bodies' events


def operation_kind(hlo_op: str) -> str:
  """`convolution.12` -> `convolution`, `loop_add_fusion.3` -> `loop_add_fusion`."""
  return re.sub(r"(\.\d+)+$", "", hlo_op)


def source(op_name: str, shape: str) -> str:
  """What JAX operation an HLO operation was made from, by its `op_name` metadata and shape.

  `jit(train_steps)/transpose(jvp())/conv_general_dilated` with a kernel's
  shape is `backward conv_general_dilated (kernel)`; a named jit around the
  operation (`jit(relu)`, `jit(_where)`) is kept, as the thing it computes.
  """
  direction = "backward" if "transpose(" in op_name else "forward"
  parts = [p for p in op_name.split("/")[1:] if not p.startswith(("jvp(", "transpose("))]
  named = [p[4:-1] for p in parts if p.startswith("jit(")]
  what = " ".join(([named[-1]] if named else []) + parts[-1:])
  if what.endswith("conv_general_dilated") and direction == "backward":
    what += " (input)" if shape.startswith(("f32[128,", "bf16[128,")) else " (kernel)"
  return f"{direction} {what}"


def hlo_sources(hlo_dir: str, module: str) -> dict[str, str]:
  """{HLO operation: `source`} of the newest compiled dump of `module` under `hlo_dir`."""
  dumps = glob.glob(os.path.join(hlo_dir, f"*.{module}.cpu_after_optimizations.txt"))
  if not dumps:
    raise app.UsageError(f"no *.{module}.cpu_after_optimizations.txt under {hlo_dir}")
  sources = {}
  with open(max(dumps, key=os.path.getmtime)) as f:
    for line in f:
      m = re.match(r'\s*(?:ROOT )?%(\S+) = (\S+) .*?metadata=\{op_name="([^"]*)"', line)
      if m:
        sources[m.group(1)] = source(m.group(3), m.group(2))
  return sources


def summarise(trace_file: str, module: str, sources: dict[str, str] | None = None) -> dict | None:
  """Microseconds and counts of `module`'s operations, by kind (or `sources`); None if it did
  not run."""
  with gzip.open(trace_file) as f:
    events = json.load(f)["traceEvents"]
  micros, counts = collections.Counter(), collections.Counter()
  for event in events:
    args = event.get("args") or {}
    if event.get("ph") == "X" and args.get("hlo_module") == module and "hlo_op" in args:
      kind = operation_kind(args["hlo_op"])
      if kind in CONTAINERS:
        continue
      if sources is not None:
        kind = sources.get(args["hlo_op"], "unknown")
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
  sources = hlo_sources(FLAGS.hlo_dir, FLAGS.module) if FLAGS.hlo_dir else None
  summaries = (summarise(t, FLAGS.module, sources) for t in sorted(traces, key=os.path.getmtime,
                                                           reverse=True))
  summary = next((s for s in summaries if s), None)
  if summary is None:
    raise app.UsageError(f"no trace under {FLAGS.profile_dir} ran {FLAGS.module}")
  print(json.dumps(summary))
  print(f"\n{'operation kind':<48} {'count':>7} {'ms':>10} {'share':>7}")
  for row in summary["kinds"][:FLAGS.rows]:
    print(f"{row['kind'][:48]:<48} {row['count']:>7} {row['ms']:>10.1f} {row['share']:>7.1%}")
  print(f"{'all':<48} {'':>7} {summary['total_ms']:>10.1f}")


if __name__ == "__main__":
  flags.mark_flag_as_required("profile_dir")
  app.run(main)
