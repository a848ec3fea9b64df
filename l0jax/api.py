"""What the command line does, for a network in your own code: costs, penalty, export.

Every function takes a gated network, called as `net(images, train=..., gate_key=...)`,
and its channel graph (`graphs.Graph`: what the cost accounting and the export need to know
of it). The usual way to get both takes two lines: `gating.gate_network` puts L0 gates into
an unmodified NNX CNN, and `tracing.trace_graph` reads the gated network's graph from its
program (`examples/custom_cnn.py`, which runs every function here). A network that carries
its own gates (`gates.L0Gate`, `gates.gate_channels`) can be traced too, or pass a graph
stated by hand, for what tracing cannot follow (`examples/stated_graph.py`).
"""

import os
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from l0jax import accounting, data, export, graphs


def costs(net: nnx.Module, graph: graphs.Graph) -> dict[str, Any]:
  """Parameters and MACs of `net` at test time, full and kept, per layer and in total.

  `accounting.format_table` prints it as `--mode=test` does.
  """
  return accounting.report(graph, graph.log_alphas(net))


def penalty(net: nnx.Module, graph: graphs.Graph, kind: str = "macs") -> jax.Array:
  """The L0 term to add to the loss (times a lambda), differentiable in the gates.

  `kind`: 'macs' or 'params' (the expected kept fraction of the full
  network's MACs or parameters), or 'mean_gate' (the mean probability that a
  gate is open).
  """
  return accounting.penalty(kind, graph.log_alphas(net), graph)


def save_export(net: nnx.Module, graph: graphs.Graph, export_dir: str | os.PathLike,
                images: np.ndarray, mean: np.ndarray, std: np.ndarray,
                info: dict[str, Any] | None = None, with_onnx: bool = False) -> dict[str, Any]:
  """Writes the compact network of `net` (kept channels only, BN and gates folded) to a folder.

  `images`: uint8 NHWC examples the exported function will take, normalised
  inside it by `mean` and `std` per channel. The compact network is checked
  against `net`'s test-time logits on them (float32 networks only), and
  the export against the compact network, before the folder is put in place.
  `with_onnx` adds inference.onnx, for onnxruntime (the onnx extra).
  Returns what `--mode=export` writes to export_metrics.json, agreement
  measured on `images`.
  """
  images = np.asarray(images)
  params = export.compact_params(net, graph)
  normalized = np.asarray(data.normalize(images, mean, std))
  labels = np.asarray(net(normalized, train=False).argmax(-1))
  metrics = export.verify(net, graph, params, normalized, labels, len(images))
  export.save(export_dir, graph, params, images, mean, std, info or {}, metrics, with_onnx)
  return metrics


def load_export(export_dir: str | os.PathLike) -> Callable[[np.ndarray], jax.Array]:
  """uint8 images [batch, *input_shape] -> logits, from an export; needs JAX only."""
  return export.load_inference(export_dir)
