r"""l0jax's training and evaluation images/s beside the same GoogleNet in PyTorch, same cores.

  python -m benchmarks.versus_pytorch                  # full width, batch 128, 32x32x3

Times, in one process and interleaved (A, B, C, A, B, C, ...) so that load
from other processes hits all alike, the training call `main.py` makes
(`benchmarks/throughput.py` describes it) for each of `--dtypes`, with and
without gates, and the same network in PyTorch
(`benchmarks/pytorch_googlenet.py`) in bfloat16 autocast and in float32, both
channels-last, AdamW, `--threads` threads, a random batch of uint8 images
flipped and normalised each step. Then the evaluation calls, the same way.
Prints one JSON object, then a table with each l0jax variant's ratio to the
faster PyTorch precision (gated to gated, ungated to ungated).
PyTorch is optional: without it the PyTorch rows are skipped, with a line
that says so. It takes `benchmarks/throughput.py`'s flags.
"""

import json
import os
import sys
import time
from typing import Callable

import jax
import numpy as np
from absl import app, flags

from benchmarks import throughput
from l0jax import data, run_config, sharding

FLAGS = flags.FLAGS
flags.DEFINE_integer("threads", os.cpu_count() or 1, "PyTorch's intra-op threads.")
FLAGS.set_default("dtypes", ["float32", "bfloat16_matmuls"])


def l0jax_calls(dtype: str, use_gate: bool, dataset: data.Dataset, mesh) -> throughput.Calls:
  config = run_config.base_config()
  config.update(dataset="synthetic", width_multiplier=FLAGS.width_multiplier, use_gate=use_gate,
                compute_dtype=dtype, batch_size=int(FLAGS.batch_sizes[0]),
                steps_per_call=FLAGS.steps, eval_batch_size=FLAGS.eval_batch_size, seed=FLAGS.seed)
  run_config.validate(config)
  return throughput.network_calls(config, dataset, mesh, np.random.default_rng(FLAGS.seed))


def pytorch_calls(use_gate: bool, bfloat16: bool, num_images: int) -> throughput.Calls:
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  from benchmarks import pytorch_googlenet  # pylint: disable=import-outside-toplevel

  torch.manual_seed(FLAGS.seed)
  config = run_config.base_config()
  size, batch_size = FLAGS.image_size, int(FLAGS.batch_sizes[0])
  net = pytorch_googlenet.GoogleNet(10, 3, use_gate, FLAGS.width_multiplier).to(
      memory_format=torch.channels_last)
  gate_params = [b.log_alpha for b in net.blocks] if use_gate else []
  others = [p for p in net.parameters() if all(p is not g for g in gate_params)]
  optimizer = torch.optim.AdamW(
      [{"params": others}, {"params": gate_params, "weight_decay": 0.0}],
      lr=config.learning_rate, weight_decay=config.weight_decay)
  images = torch.randint(0, 256, (num_images, 3, size, size), dtype=torch.uint8)
  labels = torch.randint(0, 10, (num_images,))
  autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16)

  def normalize(x):
    return ((x.float() - 127.5) / 64.0).contiguous(memory_format=torch.channels_last)

  def train_call():
    net.train()
    index = torch.randint(0, num_images, (batch_size,))
    x = normalize(images[index])
    flip = torch.rand(batch_size) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    with autocast():
      logits = net(x)
    loss = F.cross_entropy(logits.float(), labels[index])
    if use_gate:
      loss = loss + config.lambda_l0 * net.l0()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if not torch.isfinite(loss):
      raise FloatingPointError("the PyTorch training loss is not finite")

  eval_images = images[:FLAGS.eval_examples]

  def evaluate_call():
    net.eval()
    with torch.no_grad(), autocast():
      for chunk in eval_images.split(FLAGS.eval_batch_size):
        net(normalize(chunk)).argmax(1)

  return throughput.Calls(train_call, evaluate_call, batch_size, len(eval_images))


def have_pytorch() -> bool:
  try:
    import torch  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return False
  return True


def main(argv):
  del argv
  dataset = throughput.synthetic_dataset()
  mesh = sharding.data_mesh()
  load_before = os.getloadavg()
  nets: dict[str, throughput.Calls] = {}
  for dtype in FLAGS.dtypes:
    for use_gate in (False, True):
      nets[f"l0jax {dtype}{' gated' if use_gate else ''}"] = l0jax_calls(dtype, use_gate,
                                                                       dataset, mesh)
  if have_pytorch():
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(FLAGS.threads)
    for precision in ("bf16 autocast", "float32"):
      for use_gate in (False, True):
        nets[f"pytorch {precision}{' gated' if use_gate else ''}"] = pytorch_calls(
            use_gate, precision != "float32", len(dataset.train_images))
    pytorch = f"PyTorch {torch.__version__}, {FLAGS.threads} threads"
  else:
    pytorch = None
    print("PyTorch is not installed: its rows are skipped (pip install torch to compare).",
          file=sys.stderr)
  trained = throughput.measure({name: n.train for name, n in nets.items()})
  evaluated = throughput.measure({name: n.evaluate for name, n in nets.items()})
  results = {}
  for name, n in nets.items():
    t, e = trained[name], evaluated[name]
    results[name] = {
        "train_images_per_s": round(n.train_images / t.s, 1),
        "train_images_per_cpu_s": round(n.train_images / t.cpu_s, 1),
        "eval_images_per_s": round(n.eval_images / e.s, 1),
        "first_train_call_s": round(t.first_s, 1),
    }
  for name, r in results.items():
    if name.endswith(" gated"):
      r["gate_overhead"] = round(results[name[:-6]]["train_images_per_s"]
                                 / r["train_images_per_s"] - 1, 4)
    if pytorch and not name.startswith("pytorch"):
      # The faster PyTorch precision, gated or not as this variant.
      reference = max((n for n in results if n.startswith("pytorch")
                       and n.endswith(" gated") == name.endswith(" gated")),
                      key=lambda n: results[n]["train_images_per_s"])
      r["pytorch_reference"] = reference
      r["vs_pytorch"] = round(r["train_images_per_s"] / results[reference]["train_images_per_s"], 3)
      r["vs_pytorch_cpu_time"] = round(r["train_images_per_cpu_s"]
                                       / results[reference]["train_images_per_cpu_s"], 3)
  print(json.dumps({
      "jax": jax.__version__, "pytorch": pytorch, "cpu_count": os.cpu_count(),
      "width_multiplier": FLAGS.width_multiplier, "image_size": FLAGS.image_size,
      "batch_size": int(FLAGS.batch_sizes[0]), "repeats": FLAGS.repeats,
      "eval_examples": FLAGS.eval_examples, "load_average_before": load_before,
      "load_average_after": os.getloadavg(), "results": results}))
  print(f"\n{'variant':<32} {'train img/s':>11} {'img/CPU-s':>9} {'vs PyTorch':>10} "
        f"{'(CPU time)':>10} {'gate cost':>9} {'eval img/s':>10} {'eval/train':>10}")
  for name, r in results.items():
    ratio = lambda key, r=r: f"{r[key]:.2f}x" if key in r else ""
    gate = f"{r['gate_overhead']:+.1%}" if "gate_overhead" in r else ""
    print(f"{name:<32} {r['train_images_per_s']:>11,.1f} {r['train_images_per_cpu_s']:>9,.1f} "
          f"{ratio('vs_pytorch'):>10} {ratio('vs_pytorch_cpu_time'):>10} {gate:>9} "
          f"{r['eval_images_per_s']:>10,.0f} "
          f"{r['eval_images_per_s'] / r['train_images_per_s']:>9.1f}x")
  print(f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after "
        f"({os.cpu_count()} CPUs): figures under load are not final.")


if __name__ == "__main__":
  app.run(main)
