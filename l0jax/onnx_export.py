"""The compact network as an ONNX model, for ONNX Runtime on CPUs, phones and edge devices.

It computes `export.serving_function`: uint8 NHWC images in (any batch size),
cast and normalised inside, transposed once to the NCHW that ONNX's convs
take, then the compact network's layers as `export.compact_apply` runs them,
float32 logits out. A layer with no output channels (closed) leaves no
tensor: what reads it concatenates the rest, and a layer left with no input
channels gives its ReLU'd bias at every pixel, as `compact_apply` does.

The graph is written from the channel graph and the compact weights with the
`onnx` package, not converted from JAX: jax2onnx 0.17.1 requires
orbax-checkpoint < 0.11.37 (the core pins 0.12.8), and the model it made of
a network with closed layers failed to load in onnxruntime 1.31.

onnx and onnxruntime are the `onnx` extra (requirements-onnx.txt), imported
only here and only when asked for; without them `require` raises one UserError.
"""

import importlib
import importlib.metadata
import importlib.util
import os
from typing import Any, Callable

import numpy as np

from l0jax import graphs
from l0jax.errors import UserError

FILE = "inference.onnx"
# Shape's start and end need opset 15; 17 (ONNX 1.12, 2022) is old enough for older runtimes
# and mobile builds to take the file.
OPSET = 17
INPUT, OUTPUT = "images", "logits"
BATCH = "batch"  # the symbolic name of the batch dimension
EXTRA = "pip install \"l0jax[onnx]\" (or -r requirements-onnx.txt)"
PACKAGES = ("onnx", "onnxruntime")


def available() -> bool:
  """Whether the onnx extra is installed."""
  return all(importlib.util.find_spec(name) is not None for name in PACKAGES)


def require() -> tuple[Any, Any]:
  """The onnx and onnxruntime modules; one UserError naming the extra if either is missing."""
  try:
    return tuple(importlib.import_module(name) for name in PACKAGES)
  except ImportError as e:
    raise UserError(f"ONNX export needs onnx and onnxruntime, which are not installed "
                    f"({e.name} is missing): {EXTRA}") from None


class _Builder:
  """Appends nodes and initializers; every tensor is named after the graph node it belongs to."""

  def __init__(self, onnx_module):
    self.helper = onnx_module.helper
    self.numpy_helper = onnx_module.numpy_helper
    self.nodes, self.initializers = [], []
    self.concats = {}  # the inputs a node concatenates, made once for all the nodes that read them

  def const(self, name: str, value: np.ndarray) -> str:
    self.initializers.append(self.numpy_helper.from_array(np.asarray(value), name))
    return name

  def op(self, op_type: str, inputs: list[str], name: str, **attributes) -> str:
    self.nodes.append(self.helper.make_node(op_type, inputs, [name], name=name, **attributes))
    return name


def _same_pads(hw: int, window: int, stride: int) -> list[int]:
  """XLA's "SAME" padding (the odd pixel after), as ONNX's [top, left, bottom, right]."""
  total = max((-(-hw // stride) - 1) * stride + window - hw, 0)
  return [total // 2] * 2 + [total - total // 2] * 2


def _pads(padding: str | int, hw: int, window: int, stride: int) -> list[int]:
  return _same_pads(hw, window, stride) if padding == "SAME" else [padding] * 4


def _layer(b: _Builder, layer: graphs.Layer, p: dict[str, np.ndarray], x: str | None,
           in_hw: int, out_hw: int, batch: str) -> str | None:
  """The layer's output tensor (NCHW, or [batch, c] if dense); None if it has no channels."""
  kernel, bias = p["kernel"], p["bias"]
  if not bias.size:
    return None
  if x is None:  # every input channel closed: the bias at every pixel
    value = np.maximum(bias, 0) if layer.relu else bias
    shape = (1, -1) if layer.dense else (1, -1, 1, 1)
    size = [bias.size] if layer.dense else [bias.size, out_hw, out_hw]
    to = b.op("Concat", [batch, b.const(f"{layer.name}/size", np.array(size, np.int64))],
              f"{layer.name}/shape", axis=0)
    return b.op("Expand", [b.const(f"{layer.name}/bias", value.reshape(shape)), to], layer.name)
  y = f"{layer.name}/linear" if layer.relu else layer.name
  if layer.dense:
    b.op("Gemm", [x, b.const(f"{layer.name}/kernel", kernel),
                  b.const(f"{layer.name}/bias", bias)], y)
  else:
    b.op("Conv", [x, b.const(f"{layer.name}/kernel", kernel.transpose(3, 2, 0, 1)),
                  b.const(f"{layer.name}/bias", bias)], y,
         kernel_shape=[layer.kernel] * 2, strides=[layer.stride] * 2,
         pads=_pads(layer.padding, in_hw, layer.kernel, layer.stride))
  return b.op("Relu", [y], layer.name) if layer.relu else y


def _pool(b: _Builder, node: graphs.Pool, x: str, in_hw: int) -> str:
  if node.kind == "mean":
    return b.op("Flatten", [b.op("GlobalAveragePool", [x], f"{node.name}/pool")], node.name)
  # ONNX's max-pool never picks a padded pixel, as padding with -inf does not.
  return b.op("MaxPool", [x], node.name, kernel_shape=[node.window] * 2,
              strides=[node.stride] * 2, pads=_pads(node.padding, in_hw, node.window, node.stride))


def _shortcut(b: _Builder, node: graphs.Pad, p: dict[str, np.ndarray], x: str) -> str:
  """x[:, ::stride, ::stride] with the compact zero channels before and after, in NCHW."""
  if node.stride != 1:
    x = b.op("Slice", [x, b.const(f"{node.name}/starts", np.zeros(2, np.int64)),
                       b.const(f"{node.name}/ends", np.full(2, np.iinfo(np.int64).max)),
                       b.const(f"{node.name}/axes", np.array([2, 3], np.int64)),
                       b.const(f"{node.name}/steps", np.full(2, node.stride, np.int64))],
             f"{node.name}/subsample")
  pads = np.array([0, len(p["before"]), 0, 0, 0, len(p["after"]), 0, 0], np.int64)
  return b.op("Pad", [x, b.const(f"{node.name}/pads", pads)], node.name)


def _add(b: _Builder, node: graphs.Add, inputs: list[str]) -> str | None:
  """The sum of the inputs that have channels (those that have none are closed or zeros)."""
  if not inputs:
    return None
  y = b.op("Sum", inputs, f"{node.name}/sum")
  return b.op("Relu", [y], node.name) if node.relu else y


def _concat(b: _Builder, name: str, inputs: list[str | None]) -> str | None:
  """The channels of `inputs` (None: no channels) as one tensor; None if there are none."""
  present = tuple(x for x in inputs if x is not None)
  if len(present) < 2:
    return present[0] if present else None
  if present not in b.concats:
    b.concats[present] = b.op("Concat", list(present), f"{name}/inputs", axis=1)
  return b.concats[present]


def model(graph: graphs.Graph, params: dict[str, dict[str, Any]], mean: np.ndarray,
          std: np.ndarray) -> Any:
  """The onnx.ModelProto of `export.serving_function(graph, params, mean, std)`."""
  onnx, _ = require()
  b = _Builder(onnx)
  params = {name: {k: np.asarray(v, np.float32) for k, v in p.items()}
            for name, p in params.items()}
  x = b.op("Cast", [INPUT], "cast", to=onnx.TensorProto.FLOAT)
  x = b.op("Div", [b.op("Sub", [x, b.const("mean", np.asarray(mean, np.float32))], "centred"),
                   b.const("std", np.asarray(std, np.float32))], "normalised")
  values = {graphs.INPUT: b.op("Transpose", [x], "nchw", perm=[0, 3, 1, 2])}
  batch = b.op("Shape", [INPUT], "batch_size", start=0, end=1)
  for node in graph.nodes:
    inputs = [values[name] for name in node.inputs]
    in_hw = graph.out_hw(node.inputs[0])
    if isinstance(node, graphs.Layer):
      values[node.name] = _layer(b, node, params[node.name], _concat(b, node.name, inputs),
                                 in_hw, graph.out_hw(node.name), batch)
    elif isinstance(node, graphs.Add):
      values[node.name] = _add(b, node, [x for x in inputs if x is not None])
    elif (x := _concat(b, node.name, inputs)) is None:  # a pool of closed channels only
      values[node.name] = None  # a shortcut of them: zeros, which the add that reads it skips
    elif isinstance(node, graphs.Pad):
      values[node.name] = _shortcut(b, node, params[node.name], x)
    else:
      values[node.name] = _pool(b, node, x, in_hw)
  logits = b.op("Identity", [values[graph.nodes[-1].name]], OUTPUT)
  h = onnx.helper
  proto = h.make_graph(
      b.nodes, "l0jax_compact",
      [h.make_tensor_value_info(INPUT, onnx.TensorProto.UINT8,
                                [BATCH, graph.input_hw, graph.input_hw, graph.in_channels])],
      [h.make_tensor_value_info(logits, onnx.TensorProto.FLOAT,
                                [BATCH, params[graph.nodes[-1].name]["bias"].size])],
      initializer=b.initializers)
  opsets = [h.make_opsetid("", OPSET)]
  # The oldest IR version that holds this opset, so that older runtimes load the file.
  return h.make_model(proto, opset_imports=opsets, producer_name="l0jax",
                      ir_version=h.find_min_ir_version_for(opsets))


def session(model_file: bytes | str | os.PathLike) -> Callable[[np.ndarray], np.ndarray]:
  """uint8 images -> logits, by onnxruntime on the CPU; from a model file's path or its bytes."""
  _, ort = require()
  run = ort.InferenceSession(model_file if isinstance(model_file, bytes) else str(model_file),
                             providers=["CPUExecutionProvider"])
  return lambda images: run.run([OUTPUT], {INPUT: np.asarray(images)})[0]


def info() -> dict[str, Any]:
  """What inference.json says of the ONNX file: its opset, names and the verifying versions."""
  return {"file": FILE, "opset": OPSET, "input": INPUT, "output": OUTPUT,
          "runs_on": "onnxruntime (CPUExecutionProvider)",
          "verified_with": {name: importlib.metadata.version(name) for name in PACKAGES}}
