"""benchmarks/throughput.py and inference.py on a tiny setting: each runs and prints its JSON
and table; profile_summary.py on a made-up trace."""

import gzip
import json

from benchmarks import profile_summary
from conftest import Program
from l0jax import onnx_export


def test_throughput_benchmark_prints_json_and_a_table():
  # A ResNet-8, as the other tests' runs (conftest.TEST_NETWORK): the GoogleNet, the default, is
  # timed in results/throughput_cpu/.
  result = Program("-m", "benchmarks.throughput", "--model=resnet", "--depth=8",
                   "--width_multiplier=0.25", "--image_size=8",
                   "--batch_sizes=16", "--num_train=256", "--repeats=1", "--eval_examples=32",
                   "--eval_batch_size=32", "--epochs=2").wait()
  assert result.returncode == 0, result.stderr[-3000:]
  first, *table = result.stdout.splitlines()
  summary = json.loads(first)
  assert summary["backend"] == "cpu" and summary["estimated_run"]["epochs"] == 2
  assert (summary["model"], summary["depth"]) == ("resnet", 8)
  baseline, gated = summary["results"]
  assert (baseline["gates"], gated["gates"]) == (False, True)
  for r in (baseline, gated):
    assert r["dtype"] == "float32" and r["batch_size"] == 16 and r["steps_per_call"] == 1
    assert r["train_images_per_s"] > 0 and r["eval_images_per_s"] > 0
    assert r["train_compile_s"] > 0 and r["estimated_run_s"] > 0
  assert {"gate_overhead", "gate_overhead_cpu_time"} <= set(gated)
  assert "gate_overhead" not in baseline
  assert table[1].split()[:3] == ["dtype", "batch", "gates"] and len(table) == 4


def test_inference_benchmark_times_folded_and_compact_networks_in_each_runtime():
  result = Program("-m", "benchmarks.inference", "--width_multiplier=0.25", "--image_size=8",
                   "--batch_sizes=2", "--repeats=1").wait()
  assert result.returncode == 0, result.stderr[-3000:]
  first, *table = result.stdout.splitlines()
  summary = json.loads(first)
  rows = {(r["network"], r["runtime"]): r for r in summary["results"]}
  runtimes = ["jax", "onnxruntime"] if onnx_export.available() else ["jax"]
  assert list(rows) == [("full", "jax"), ("gated", "jax"), *[
      (name, runtime) for name in ("folded", "compact 50%", "compact 25%") for runtime in runtimes]]
  # Folding BN alone removes parameters (each kept channel's scale and shift), not MACs.
  params = summary["params"]
  assert params["compact 25%"] < params["compact 50%"] < params["folded"] < summary["params_full"]
  assert rows["folded", "jax"]["macs_per_image"] == summary["macs_full"]
  for name, fraction in (("compact 50%", 0.5), ("compact 25%", 0.25)):
    macs = {rows[name, runtime]["macs_per_image"] for runtime in runtimes}
    assert len(macs) == 1 and fraction - 0.02 < macs.pop() / summary["macs_full"] <= fraction
  assert table[1].split() == ["network", "runtime", "batch", "images/s", "MMACs/image",
                              "vs", "full", "vs", "folded", "folded", "MACs/MACs"]
  assert len(table) == 2 + len(rows)


def test_profile_summary_adds_up_a_modules_operations_by_kind(tmp_path):
  op = lambda module, name, dur: {"ph": "X", "name": name, "dur": dur,
                                  "args": {"hlo_module": module, "hlo_op": name}}
  events = [op("jit_train_steps", "convolution.1", 30), op("jit_train_steps", "convolution.12", 20),
            op("jit_train_steps", "loop_add_fusion.3.1", 50), op("jit_eval_step", "dot.1", 99),
            op("jit_train_steps", "while.2", 500), {"ph": "X", "name": "python", "dur": 7}]
  trace = tmp_path / "t.trace.json.gz"
  with gzip.open(trace, "wt") as f:
    json.dump({"traceEvents": events}, f)
  summary = profile_summary.summarise(str(trace), "jit_train_steps")
  assert summary["total_ms"] == 0.1  # the loop's event spans its body's: left out
  assert [(k["kind"], k["count"], k["share"]) for k in summary["kinds"]] == [
      ("convolution", 2, 0.5), ("loop_add_fusion", 1, 0.5)]
  assert profile_summary.summarise(str(trace), "jit_other") is None
