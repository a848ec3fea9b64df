"""A compact network holding only the kept channels, folded into plain conv + bias + ReLU.

Built from the network's channel graph (`graphs.Graph`) alone. For each gate,
the pruned channels' filters go, and the kept channels' test-time gates (in
(0, 1]) move into the weights of the layers that read them. That is exact
because a gate is a non-negative per-channel scale, which commutes with ReLU,
max-pool and average-pool. Eval-mode BatchNorm folds into each conv's kernel
and bias. An ungated layer that the accounting counts as removed (all its
readers closed) goes too. A gate that a coupled group shares drops its
channels in every member, in the residual adds (whose outputs it scales, as
each of their inputs is scaled by it) and in the shortcuts' zero channels
that line up with them.

The compact network is a pytree of arrays, one {kernel, bias} per layer name
and {before, after} per shortcut (of shape [zero channels kept, 0]), whose
shapes say everything (`compact_apply` runs it with the graph at any kept
counts); closed channels leave zero-size arrays, which `compact_apply`
treats explicitly. `save` writes the inference function as a jax.export
artifact with a symbolic batch size that takes the data set's own uint8
images (normalisation, weights and all inside), a JSON of its input and
statistics, the weights alone with Orbax and, if asked, an ONNX model of the
same function (`onnx_export`). `load_inference` runs the
artifact with JAX alone: no model code, no weights to restore. An export
folder is written whole, under a temporary name, and renamed into place;
`load_inference` refuses one whose files do not match its manifest.
"""

import ctypes
import errno
import hashlib
import json
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx

from l0jax import data, graphs, kept_channels, layers, onnx_export, versions, workdirs
from l0jax.errors import UserError

PARAMS_DIR = "params"
ARTIFACT = "inference.jax_export"
METRICS_FILE = "export_metrics.json"
# The sha256 of every other file in the folder: what makes a mix of two exports detectable.
MANIFEST = "manifest.json"
INFO_FILE = "inference.json"  # what the artifact takes and gives, and its normalisation
# renameat2(2) on Linux: swaps two paths in one step, so a reader finds one export or the other.
RENAME_EXCHANGE, AT_FDCWD = 2, -100
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # the artifact runs wherever the user serves it
# Largest |logit difference| between two float32 evaluations of the same network, as a
# fraction of the largest |logit| (at least 1). Folding BN and gates reorders float32
# rounding (~1e-7 relative per op) through ~10 layers of sums of up to ~1,200 terms,
# which stays well under 1e-5 relative; a mis-folded channel, even a gate of 0.9 left
# out, is off by 1e-2 or more.
RTOL = 1e-4


def _folded(net: nnx.Module, layer: graphs.Layer) -> dict[str, np.ndarray]:
  """conv + eval-mode BN as one conv: kernel * s and (bias - mean) * s + shift, s = scale / std."""
  weights = graphs.submodule_at(net, layer.path)
  kernel = np.asarray(weights.kernel[...])
  bias = (np.zeros(layer.c_out, np.float32) if weights.bias is None
          else np.asarray(weights.bias[...]))
  if layer.bn is None:
    return {"kernel": kernel, "bias": bias}
  bn = graphs.submodule_at(net, layer.bn)
  s = np.asarray(bn.scale[...]) / np.sqrt(np.asarray(bn.var[...]) + np.float32(bn.epsilon))
  return {"kernel": kernel * s, "bias": (bias - np.asarray(bn.mean[...])) * s
          + np.asarray(bn.bias[...])}


def _select(p: dict[str, np.ndarray], inputs: np.ndarray, gate: np.ndarray,
            outputs: np.ndarray) -> dict[str, np.ndarray]:
  """Keeps the input rows `inputs` (scaled by their gates) and the output columns `outputs`."""
  kernel = np.take(p["kernel"], inputs, axis=-2) * gate[inputs][:, None]
  return {"kernel": kernel[..., outputs], "bias": p["bias"][outputs]}


def compact_params(net: nnx.Module, graph: graphs.Graph) -> dict[str, dict[str, jax.Array]]:
  """The folded, pruned weights of `net` at test time (gated or not), by layer name.

  Each layer keeps the rows of its kept inputs, scaled by their test-time
  gates, and the columns of its kept outputs (`kept_channels`); a shortcut
  gets `before` and `after`, zero-size arrays as long as the zero channels it
  keeps on each side. The folding runs in NumPy (float32): eager jnp would
  compile each op for each new shape.
  """
  kept = kept_channels.kept_channels(graph, graph.log_alphas(net))
  params = {}
  for node in graph.nodes:
    if isinstance(node, graphs.Layer):
      params[node.name] = _select(_folded(net, node), *kept.read(node), kept.indices[node.name])
    elif isinstance(node, graphs.Pad):
      params[node.name] = {side: np.zeros((n, 0), np.float32)
                           for side, n in zip(("before", "after"), kept.pad_sides(node))}
  return jax.tree.map(jnp.asarray, params)


def _layer(x: jax.Array, p: dict[str, jax.Array], layer: graphs.Layer, out_hw: int):
  kernel = p["kernel"]
  if layer.dense:
    y = x @ kernel + p["bias"]
  elif kernel.size == 0:
    # No inputs (all closed upstream): a constant bias. No outputs (closed): an empty array.
    y = jnp.broadcast_to(p["bias"], (x.shape[0], out_hw, out_hw, kernel.shape[-1]))
  elif kernel.shape[:2] == (1, 1) and layer.stride == 1:
    y = layers.pointwise_conv(x, kernel) + p["bias"]  # a dot, as the model runs it
  else:
    padding = layer.padding if isinstance(layer.padding, str) else [(layer.padding,) * 2] * 2
    y = jax.lax.conv_general_dilated(x, kernel, (layer.stride,) * 2, padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]
  return jax.nn.relu(y) if layer.relu else y


def _node(x: jax.Array, node: graphs.Pool | graphs.Pad,
          p: dict[str, jax.Array] | None) -> jax.Array:
  if isinstance(node, graphs.Pad):
    x = x[:, ::node.stride, ::node.stride]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (len(p["before"]), len(p["after"]))))
  if node.kind == "mean":
    return jnp.mean(x, axis=(1, 2))
  pad = (node.padding if isinstance(node.padding, str)
         else ((0, 0), (node.padding,) * 2, (node.padding,) * 2, (0, 0)))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, node.window, node.window, 1),
                               (1, node.stride, node.stride, 1), pad)


def compact_apply(graph: graphs.Graph, params: dict[str, dict[str, jax.Array]],
                  images: jax.Array) -> jax.Array:
  """Logits of the compact network for normalised NHWC float images."""
  values = {graphs.INPUT: images}
  for node in graph.nodes:
    if isinstance(node, graphs.Add):
      y = sum(values[name] for name in node.inputs)
      values[node.name] = jax.nn.relu(y) if node.relu else y
      continue
    x = jnp.concatenate([values[name] for name in node.inputs], axis=-1)
    values[node.name] = (_layer(x, params[node.name], node, graph.out_hw(node.name))
                         if isinstance(node, graphs.Layer)
                         else _node(x, node, params.get(node.name)))
  return values[graph.nodes[-1].name]


def num_params(params: dict[str, Any]) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def _check_close(max_diff: float, max_logit: float, what: str) -> None:
  if max_diff > RTOL * max(1.0, max_logit):
    raise RuntimeError(f"{what} differ by up to {max_diff:.3g} on logits up to {max_logit:.3g} "
                       f"(tolerance {RTOL:g} relative)")


def verify(net: nnx.Module, graph: graphs.Graph, params: dict[str, Any], images: np.ndarray,
           labels: np.ndarray, batch_size: int) -> dict[str, float | int]:
  """Runs the gated network (test time) and the compact one on the same images, batch by batch.

  Both run at full float32 matmul precision (not TF32), so that they are
  comparable; a difference beyond RTOL raises RuntimeError.
  """
  if jnp.dtype(graphs.submodule_at(net, graph.layers[-1].path).dtype or jnp.float32) != jnp.float32:
    raise ValueError("verify compares float32 networks; build the model with dtype=float32")
  graphdef, state = nnx.split(net)
  gated = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x, train=False))
  compact = jax.jit(lambda params, x: compact_apply(graph, params, x))
  max_diff = max_logit = 0.0
  correct_gated = correct_compact = 0
  with jax.default_matmul_precision("highest"):
    for start in range(0, len(images), batch_size):
      x, y = images[start:start + batch_size], labels[start:start + batch_size]
      a, b = np.asarray(gated(state, x)), np.asarray(compact(params, x))
      max_diff = max(max_diff, float(np.max(np.abs(a - b))))
      max_logit = max(max_logit, float(np.max(np.abs(a))))
      correct_gated += int(np.sum(a.argmax(-1) == y))
      correct_compact += int(np.sum(b.argmax(-1) == y))
  _check_close(max_diff, max_logit, "gated and compact logits")
  return {
      "max_abs_logit_diff": max_diff,
      "test_accuracy_gated": correct_gated / len(images),
      "test_accuracy_compact": correct_compact / len(images),
      "params_compact": num_params(params),
  }


def _storable(params: dict[str, Any]) -> dict[str, Any]:
  """The weights nested by the parts of their layer names, as Orbax's paths take them.

  Orbax refuses zero-size arrays; they carry nothing but a shape, which the artifact holds.
  """
  tree = {}
  for name, p in params.items():
    *parents, leaf = name.split("/")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = jax.tree.map(lambda a: a if a.size else None, p)
  return tree


def _checkpointer() -> ocp.StandardCheckpointer:
  """Orbax for this process alone: one process writes an export, and any one reads it."""
  me = jax.process_index()
  return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}))


def _file_hashes(folder: epath.Path) -> dict[str, str]:
  """The sha256 of every file under `folder` but the manifest, by path within it."""
  paths = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
  return {os.path.relpath(path, folder): hashlib.sha256(epath.Path(path).read_bytes()).hexdigest()
          for path in sorted(paths) if os.path.basename(path) != MANIFEST}


def _sibling(export_dir: epath.Path, what: str) -> epath.Path:
  return export_dir.parent / f".{export_dir.name}.{what}"


def serving_function(graph: graphs.Graph, params: dict[str, Any], mean: np.ndarray,
                     std: np.ndarray) -> Callable[[jax.Array], jax.Array]:
  """uint8 NHWC images, as the data set stores them -> logits, normalisation included."""
  return lambda images: compact_apply(graph, params, data.normalize(images, mean, std))


def save(export_dir: str | os.PathLike, graph: graphs.Graph, params: dict[str, Any],
         example_images: np.ndarray, mean: np.ndarray, std: np.ndarray, info: dict[str, Any],
         metrics: dict[str, Any], with_onnx: bool = False) -> None:
  """Writes the inference function (jax.export: weights and normalisation inside, any batch
  size), a JSON of what it takes (INFO_FILE, with `info`), the weights alone (Orbax),
  `metrics` and a manifest of their hashes, as one folder that replaces `export_dir` whole.
  `with_onnx` adds the same function as an ONNX model (`onnx_export`), checked in onnxruntime.

  `example_images` are uint8 [N, H, W, C]. Everything goes into a temporary
  folder first, is reloaded and run on `example_images` from there, and the
  folder is then renamed into place, so that a killed export leaves the
  previous export or this one, never a mix.
  """
  export_dir = epath.Path(export_dir).resolve()
  tmp, old = _sibling(export_dir, "tmp"), _sibling(export_dir, "old")
  if old.exists() and not export_dir.exists():
    old.rename(export_dir)  # A save killed between its two renames below.
  for leftover in (tmp, old):
    if leftover.exists():
      leftover.rmtree()
  tmp.mkdir(parents=True)
  params = jax.tree.map(np.asarray, params)  # Host arrays: one process writes them.
  with _checkpointer() as checkpointer:
    checkpointer.save(tmp / PARAMS_DIR, _storable(params))
  serve = jax.jit(serving_function(graph, params, mean, std))
  batch, = jax.export.symbolic_shape("b")
  images = jax.ShapeDtypeStruct((batch, *example_images.shape[1:]), jnp.uint8)
  exported = jax.export.export(serve, platforms=PLATFORMS)(images)
  workdirs.write_file(tmp / ARTIFACT, exported.serialize())
  if with_onnx:
    workdirs.write_file(tmp / onnx_export.FILE,
                        onnx_export.model(graph, params, mean, std).SerializeToString())
    info = {**info, "onnx": onnx_export.info()}
  workdirs.write_file(tmp / INFO_FILE, json.dumps({
      **info, "input_shape": list(example_images.shape[1:]), "input_dtype": "uint8",
      "num_classes": int(exported.out_avals[0].shape[-1]),
      "mean": [float(m) for m in mean], "std": [float(s) for s in std],
      "output": "logits, float32 [batch, num_classes]",
      "manifest": MANIFEST}, indent=2) + "\n")  # Says that it has one: it may not go missing.
  workdirs.write_file(tmp / METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
  workdirs.write_file(tmp / MANIFEST, json.dumps(_file_hashes(tmp), indent=2) + "\n")
  want = np.asarray(serve(example_images))
  reloaded = {f"the reloaded {ARTIFACT}": load_inference(tmp)}
  if with_onnx:
    reloaded[f"{onnx_export.FILE} in onnxruntime"] = onnx_export.session(tmp / onnx_export.FILE)
  for what, infer in reloaded.items():
    got = np.asarray(infer(example_images))
    _check_close(float(np.max(np.abs(want - got))), float(np.max(np.abs(want))),
                 f"{what} and the compact network")
  if export_dir.exists() and _exchange(tmp, export_dir):
    tmp.rmtree()  # The previous export, swapped out.
    return
  if export_dir.exists():  # No atomic swap here: a reader recovers from `old` (`_readable_export`).
    export_dir.rename(old)
  tmp.rename(export_dir)
  if old.exists():
    old.rmtree()


def _exchange(a: epath.Path, b: epath.Path) -> bool:
  """Swaps the folders `a` and `b` in one step (Linux's renameat2); False where that is not
  supported (another system, an old C library, a file system without it)."""
  if not sys.platform.startswith("linux"):
    return False
  renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
  if renameat2 is None:
    return False
  if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
    return True
  error = ctypes.get_errno()
  if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
    return False
  raise OSError(error, os.strerror(error), str(b))


def _readable_export(export_dir: epath.Path) -> epath.Path:
  """`export_dir`, or the previous export that a save killed between its two renames left beside
  it (where folders cannot be swapped in one step); the next save puts it back."""
  old = _sibling(export_dir, "old")
  if export_dir.exists() or not old.is_dir():
    return export_dir
  logging.warning("%s is missing: an export was stopped while replacing it; reading the previous "
                  "one, %s (the next --mode=export puts it back)", export_dir, old)
  return old


def _check_whole(export_dir: epath.Path, info: dict[str, Any]) -> None:
  """Refuses a folder whose files are not the ones its manifest lists, as they were written.

  An export made before manifests existed loads with a warning (`versions`).
  """
  manifest = export_dir / MANIFEST
  if not manifest.exists():
    versions.export_without_manifest(export_dir, info, MANIFEST)
    return
  listed = workdirs.read_json(manifest, dict, "export again")
  found = _file_hashes(export_dir)
  differ = sorted(name for name in set(listed) | set(found) if listed.get(name) != found.get(name))
  if differ:
    raise UserError(f"{export_dir} is not one whole export: {len(differ)} file(s) differ from "
                    f"its {MANIFEST} ({', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''})"
                    "; export again")


def _damaged(path: epath.Path, e: Exception) -> UserError:
  return UserError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                   "export the run again (--mode=export)")


def _check_present(export_dir: epath.Path) -> None:
  """Refuses a folder that holds no export, saying why: none there, one of this version with a
  file missing, or one made before the artifact existed (it took float32 images)."""
  if not export_dir.is_dir():
    raise UserError(f"{export_dir} holds no exported network: it does not exist (--mode=export "
                    "writes one)")
  missing = [name for name in (ARTIFACT, INFO_FILE) if not (export_dir / name).is_file()]
  if not missing:
    return
  raise versions.export_missing(export_dir, missing[0], ARTIFACT, MANIFEST)


def load_inference(export_dir: str | os.PathLike) -> Callable[[np.ndarray], jax.Array]:
  """uint8 images [batch, *input_shape] -> logits, from a `save`d export; needs JAX only.

  A missing or damaged file of the export raises a UserError that names it.
  """
  export_dir = _readable_export(epath.Path(export_dir).resolve())
  _check_present(export_dir)
  info = workdirs.read_json(export_dir / INFO_FILE, dict, "export the run again (--mode=export)")
  input_shape = info.get("input_shape")
  if not (isinstance(input_shape, list) and input_shape
          and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in input_shape)):
    raise _damaged(export_dir / INFO_FILE, ValueError(f"input_shape={input_shape!r}"))
  _check_whole(export_dir, info)
  input_shape = tuple(input_shape)
  try:
    exported = jax.export.deserialize(bytearray((export_dir / ARTIFACT).read_bytes()))
  except Exception as e:  # pylint: disable=broad-except  # flatbuffers raise all sorts.
    raise _damaged(export_dir / ARTIFACT, e) from e
  call = jax.jit(exported.call)

  def infer(images: np.ndarray) -> jax.Array:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != input_shape:
      raise ValueError(f"the exported network takes uint8 images of shape [batch, "
                       f"{', '.join(map(str, input_shape))}], not {images.dtype} "
                       f"{list(images.shape)}")
    return call(images)

  return infer
