"""A compact network holding only the kept channels, folded into plain conv + bias + ReLU.

For each gated branch output, the pruned channels' filters go, and the kept
channels' test-time gates (in (0, 1]) move into the weights that read them:
the next block's 1x1 convs, or the dense head. That is exact because a gate
is a non-negative per-channel scale, which commutes with max-pool and
average-pool. Eval-mode BatchNorm folds into each conv's kernel and bias.
A 1x1 reduce whose branch is closed entirely feeds nothing and goes too.

The compact network is a pytree of arrays whose shapes say everything
(`compact_apply` works at any width and any kept counts); closed channels
leave zero-size arrays, which `compact_apply` treats explicitly. `save`
writes the inference function as a jax.export artifact with a symbolic batch
size that takes the data set's own uint8 images (normalisation, weights and
all inside), a JSON of its input and statistics, and the weights alone with
Orbax. `load_inference` runs the artifact with JAX alone: no model code, no
weights to restore. An export folder is written whole, under a temporary
name, and renamed into place; `load_inference` refuses one whose files do not
match its manifest.
"""

import hashlib
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx

from l0jax import data
from l0jax import gates
from l0jax import model
from l0jax.errors import UserError

# Per branch (in `model.BRANCHES` order), its convs from the block input to the gated output.
CHAINS = (("branch1",), ("branch3_reduce", "branch3"), ("branch5_reduce", "branch5"),
          ("branch_pool",))
PARAMS_DIR = "params"
ARTIFACT = "inference.jax_export"
METRICS_FILE = "export_metrics.json"
# The sha256 of every other file in the folder: what makes a mix of two exports detectable.
MANIFEST = "manifest.json"
INFO_FILE = "inference.json"  # what the artifact takes and gives, and its normalisation
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # the artifact runs wherever the user serves it
# Largest |logit difference| between two float32 evaluations of the same network, as a
# fraction of the largest |logit| (at least 1). Folding BN and gates reorders float32
# rounding (~1e-7 relative per op) through ~10 layers of sums of up to ~1,200 terms,
# which stays well under 1e-5 relative; a mis-folded channel, even a gate of 0.9 left
# out, is off by 1e-2 or more.
RTOL = 1e-4


def _folded(conv_bn: model.ConvBN) -> dict[str, np.ndarray]:
  """conv + eval-mode BN as one conv: kernel * s and (bias - mean) * s + shift, s = scale / std."""
  conv, bn = conv_bn.conv, conv_bn.bn
  s = np.asarray(bn.scale[...]) / np.sqrt(np.asarray(bn.var[...]) + np.float32(bn.epsilon))
  bias = (np.asarray(conv.bias[...]) - np.asarray(bn.mean[...])) * s + np.asarray(bn.bias[...])
  return {"kernel": np.asarray(conv.kernel[...]) * s, "bias": bias}


def _select(p: dict[str, np.ndarray], inputs: np.ndarray, gate: np.ndarray,
            outputs: np.ndarray) -> dict[str, np.ndarray]:
  """Keeps the input rows `inputs` (scaled by their gates) and the output columns `outputs`."""
  kernel = np.take(p["kernel"], inputs, axis=-2) * gate[inputs][:, None]
  return {"kernel": kernel[..., outputs], "bias": p["bias"][outputs]}


def compact_params(net: model.GoogleNet) -> dict[str, Any]:
  """The folded, pruned weights of `net` at test time (gated or not).

  The folding runs in NumPy (float32): eager jnp would compile each op for each new shape.
  """
  stem = _folded(net.stem)
  gate = np.ones(stem["bias"].shape, np.float32)  # what multiplies each channel of a block input
  blocks = []
  for block in net.blocks:
    branch_gates = ([np.asarray(gates.test_gate(g.log_alpha[...])) for g in block.gates]
                    or [np.ones(getattr(block, chain[-1]).conv.out_features, np.float32)
                        for chain in CHAINS])
    compact = {}
    for chain, z in zip(CHAINS, branch_gates):
      kept = np.flatnonzero(z > 0)
      inputs, input_gate = np.flatnonzero(gate > 0), gate
      for name in chain:
        conv_bn = getattr(block, name)
        if name == chain[-1]:
          outputs = kept
        else:  # a reduce: all its outputs, or none if its branch is closed and it feeds nothing
          outputs = np.arange(conv_bn.conv.out_features if kept.size else 0)
        compact[name] = _select(_folded(conv_bn), inputs, input_gate, outputs)
        inputs, input_gate = np.arange(outputs.size), np.ones(outputs.size, np.float32)
    blocks.append(compact)
    gate = np.concatenate(branch_gates)
  head = {"kernel": np.asarray(net.head.kernel[...]), "bias": np.asarray(net.head.bias[...])}
  head = _select(head, np.flatnonzero(gate > 0), gate, np.arange(head["bias"].size))
  return jax.tree.map(jnp.asarray, {"stem": stem, "blocks": blocks, "head": head})


def _conv_relu(x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
  kernel = p["kernel"]
  if kernel.size == 0:
    # No inputs (all closed upstream): a constant bias. No outputs (closed): an empty array.
    y = jnp.broadcast_to(p["bias"], (*x.shape[:-1], kernel.shape[-1]))
  else:
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]
  return jax.nn.relu(y)


def compact_apply(params: dict[str, Any], images: jax.Array) -> jax.Array:
  """Logits of the compact network for normalised NHWC float images."""
  x = _conv_relu(images, params["stem"])
  for i, p in enumerate(params["blocks"]):
    x = jnp.concatenate([
        _conv_relu(x, p["branch1"]),
        _conv_relu(_conv_relu(x, p["branch3_reduce"]), p["branch3"]),
        _conv_relu(_conv_relu(x, p["branch5_reduce"]), p["branch5"]),
        _conv_relu(model.max_pool_3x3(x, 1), p["branch_pool"]),
    ], axis=-1)
    if i in model.POOL_AFTER:
      x = model.max_pool_3x3(x, 2)
  return jnp.mean(x, axis=(1, 2)) @ params["head"]["kernel"] + params["head"]["bias"]


def num_params(params: dict[str, Any]) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def _check_close(max_diff: float, max_logit: float, what: str) -> None:
  if max_diff > RTOL * max(1.0, max_logit):
    raise RuntimeError(f"{what} differ by up to {max_diff:.3g} on logits up to {max_logit:.3g} "
                       f"(tolerance {RTOL:g} relative)")


def verify(net: model.GoogleNet, params: dict[str, Any], images: np.ndarray, labels: np.ndarray,
           batch_size: int) -> dict[str, float | int]:
  """Runs the gated network (test time) and the compact one on the same images, batch by batch.

  Both run at full float32 matmul precision (not TF32), so that they are
  comparable; a difference beyond RTOL raises RuntimeError.
  """
  if jnp.dtype(net.head.dtype) != jnp.float32:
    raise ValueError("verify compares float32 networks; build the model with dtype=float32")
  graphdef, state = nnx.split(net)
  gated = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x, train=False))
  compact = jax.jit(compact_apply)
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


def _storable(tree: Any) -> Any:
  """Orbax refuses zero-size arrays; they carry nothing but a shape, which the artifact holds."""
  return jax.tree.map(lambda a: a if a.size else None, tree)


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


def serving_function(params: dict[str, Any], mean: np.ndarray,
                     std: np.ndarray) -> Callable[[jax.Array], jax.Array]:
  """uint8 NHWC images, as the data set stores them -> logits, normalisation included."""
  return lambda images: compact_apply(params, data.normalize(images, mean, std))


def save(export_dir: str | os.PathLike, params: dict[str, Any], example_images: np.ndarray,
         mean: np.ndarray, std: np.ndarray, info: dict[str, Any],
         metrics: dict[str, Any]) -> None:
  """Writes the inference function (jax.export: weights and normalisation inside, any batch
  size), a JSON of what it takes (INFO_FILE, with `info`), the weights alone (Orbax),
  `metrics` and a manifest of their hashes, as one folder that replaces `export_dir` whole.

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
  serve = jax.jit(serving_function(params, mean, std))
  batch, = jax.export.symbolic_shape("b")
  images = jax.ShapeDtypeStruct((batch, *example_images.shape[1:]), jnp.uint8)
  exported = jax.export.export(serve, platforms=PLATFORMS)(images)
  (tmp / ARTIFACT).write_bytes(exported.serialize())
  (tmp / INFO_FILE).write_text(json.dumps({
      **info, "input_shape": list(example_images.shape[1:]), "input_dtype": "uint8",
      "num_classes": int(exported.out_avals[0].shape[-1]),
      "mean": [float(m) for m in mean], "std": [float(s) for s in std],
      "output": "logits, float32 [batch, num_classes]"}, indent=2) + "\n")
  (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
  (tmp / MANIFEST).write_text(json.dumps(_file_hashes(tmp), indent=2) + "\n")
  want = np.asarray(serve(example_images))
  got = np.asarray(load_inference(tmp)(example_images))
  _check_close(float(np.max(np.abs(want - got))), float(np.max(np.abs(want))),
               f"the reloaded {ARTIFACT} and the compact network")
  if export_dir.exists():
    export_dir.rename(old)
  tmp.rename(export_dir)
  if old.exists():
    old.rmtree()


def _check_whole(export_dir: epath.Path) -> None:
  """Refuses a folder whose files are not the ones its manifest lists, as they were written."""
  manifest = export_dir / MANIFEST
  if not manifest.exists():
    logging.warning("%s has no %s (it was exported before exports had one): whether its files "
                    "come from one export cannot be checked; export again to be sure.",
                    export_dir, MANIFEST)
    return
  try:
    listed = json.loads(manifest.read_text())
  except ValueError as e:
    raise UserError(f"{manifest} is damaged ({e}); export again") from e
  found = _file_hashes(export_dir)
  differ = sorted(name for name in set(listed) | set(found) if listed.get(name) != found.get(name))
  if differ:
    raise UserError(f"{export_dir} is not one whole export: {len(differ)} file(s) differ from "
                    f"its {MANIFEST} ({', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''})"
                    "; export again")


def _damaged(path: epath.Path, e: Exception) -> UserError:
  return UserError(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                   "export the run again (--mode=export)")


def load_inference(export_dir: str | os.PathLike) -> Callable[[np.ndarray], jax.Array]:
  """uint8 images [batch, *input_shape] -> logits, from a `save`d export; needs JAX only.

  A missing or damaged file of the export raises a UserError that names it.
  """
  export_dir = epath.Path(export_dir).resolve()
  for name in (ARTIFACT, INFO_FILE):
    if not (export_dir / name).is_file():
      raise UserError(f"{export_dir} holds no exported network: {name} is missing (an export "
                      "made before it existed takes float32 images: export the run again)")
  _check_whole(export_dir)
  try:
    info = json.loads((export_dir / INFO_FILE).read_text())
    input_shape = tuple(info["input_shape"])
  except (ValueError, KeyError, TypeError) as e:
    raise _damaged(export_dir / INFO_FILE, e) from e
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
