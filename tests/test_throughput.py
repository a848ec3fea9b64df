"""benchmarks/throughput.py and inference.py on a tiny setting: each runs and prints its JSON
and table; profile_summary.py on a made-up trace."""

import gzip
import json

from benchmarks import profile_summary
from conftest import Program


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


def test_inference_benchmark_times_the_folded_network_pruning_is_compared_with():
  result = Program("-m", "benchmarks.inference", "--width_multiplier=0.25", "--image_size=8",
                   "--batch_sizes=2", "--repeats=1").wait()
  assert result.returncode == 0, result.stderr[-3000:]
  first, *table = result.stdout.splitlines()
  summary = json.loads(first)
  rows = {r["network"]: r for r in summary["results"]}
  assert list(rows) == ["full", "gated", "folded", "compact"]
  # Folding BN alone removes parameters (each kept channel's scale and shift), not MACs.
  assert summary["params_compact"] < summary["params_folded"] < summary["params_full"]
  assert rows["folded"]["macs_per_image"] == rows["full"]["macs_per_image"]
  assert rows["compact"]["macs_per_image"] < rows["folded"]["macs_per_image"]
  assert table[1].split() == ["network", "batch", "images/s", "MMACs/image", "vs", "full", "vs",
                              "folded"]


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
