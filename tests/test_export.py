"""The compact network computes the gated network's test-time logits, and survives export."""

import errno
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from flax import nnx

from l0jax import accounting, export, gates, googlenet, resnet, vgg
from l0jax.errors import UserError, os_failure

WIDTH, HW, CLASSES = 0.25, 12, 10  # 12 -> 6 -> 3 after the pools
# log_alpha per state: pruned (test-time gate 0), partly open (in (0, 1)), fully open (1).
PRUNED, PARTIAL, OPEN = -6.0, 0.0, 6.0


def randomize(net: nnx.Module, log_alpha, seed: int = 0) -> nnx.Module:
  """`net` (abstract, from nnx.eval_shape) with random weights and BN statistics, and the gates
  `log_alpha(path, shape, rng)` gives.

  Built from NumPy values, which spares the compiles of eager initialisation.
  """
  rng = np.random.default_rng(seed)

  def value(path, shape):
    name = path[-1]
    if name == "kernel":
      return rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
    if name == "var":
      return rng.uniform(0.3, 2.0, shape)
    if name == "scale":
      return rng.uniform(0.5, 1.5, shape)
    if name == "log_alpha":
      return log_alpha(path, shape, rng)
    return rng.normal(0.0, 0.2, shape)  # conv and head biases, BN means and shifts

  for path, variable in nnx.iter_graph(net):
    if isinstance(variable, nnx.Variable):
      variable.set_value(jnp.asarray(value(path, variable.shape), jnp.float32))
  return net


def gated_net(*, closed_branch=(2, 2), closed_block=4, use_gate=True, seed=0) -> googlenet.GoogleNet:
  """Random weights, BN statistics and gates: a mix of pruned, partly and fully open channels.

  `closed_branch` (block, branch) and `closed_block` (0-based) close entirely.
  """
  def log_alpha(path, shape, rng):  # path: blocks, i, gates, j, log_alpha
    if path[1] == closed_block or (path[1], path[3]) == closed_branch:
      return np.full(shape, PRUNED)
    return rng.choice([PRUNED, PARTIAL, OPEN], shape) + rng.uniform(-1.5, 1.5, shape)

  return randomize(nnx.eval_shape(lambda: googlenet.GoogleNet(
      CLASSES, 3, use_gate=use_gate, width_multiplier=WIDTH, rngs=nnx.Rngs(0))), log_alpha, seed)


gated_logits = nnx.jit(lambda net, x: net(x, train=False))


def graph_of(net: googlenet.GoogleNet):
  return net.channel_graph(HW)


def compact(net: googlenet.GoogleNet):
  return export.compact_params(net, graph_of(net))


def images(n, seed=0):
  return jax.random.normal(jax.random.key(seed), (n, HW, HW, 3))


def test_gate_states_cover_pruned_partial_and_open():
  net = gated_net()
  z = jnp.concatenate([gates.test_gate(la) for la in graph_of(net).log_alphas(net).values()])
  assert jnp.any(z == 0) and jnp.any(z == 1) and jnp.any((z > 0) & (z < 1))


@pytest.mark.parametrize("closed_block", [4, 7])  # the next block, or the head, sees no inputs
def test_compact_logits_equal_gated_test_time_logits(closed_block):
  net = gated_net(closed_block=closed_block)
  params, graph = compact(net), graph_of(net)
  x = images(8)
  want = gated_logits(net, x)
  np.testing.assert_allclose(export.compact_apply(graph, params, x), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.jit(lambda p, x: export.compact_apply(graph, p, x))(params, x),
                             want, rtol=1e-5, atol=1e-5)
  if closed_block == 7:
    np.testing.assert_allclose(want, jnp.broadcast_to(net.head.bias[...], want.shape), rtol=1e-6)


@pytest.mark.parametrize("build", [
    lambda: resnet.ResNet(CLASSES, 3, depth=20, width_multiplier=0.25, rngs=nnx.Rngs(0)),
    lambda: resnet.ResNet(CLASSES, 3, depth=20, width_multiplier=0.25, gate_residual=True,
                          rngs=nnx.Rngs(0)),
    lambda: vgg.VGG(CLASSES, 3, depth=11, width_multiplier=0.125, rngs=nnx.Rngs(0)),
    lambda: googlenet.GoogleNet(CLASSES, 3, width_multiplier=0.25, gate_reduce=True,
                                rngs=nnx.Rngs(0)),
], ids=["resnet20", "resnet20_residual", "vgg11", "googlenet_gate_reduce"])
def test_compact_logits_equal_gated_ones_on_the_other_architectures(build):
  def log_alpha(path, shape, rng):  # some gates closed whole, the others mixed
    if rng.random() < 0.25:
      return np.full(shape, PRUNED)
    return rng.choice([PRUNED, PARTIAL, OPEN], shape) + rng.uniform(-1.5, 1.5, shape)

  net = randomize(nnx.eval_shape(build), log_alpha)
  graph = net.channel_graph(HW)
  params = export.compact_params(net, graph)
  x = images(4)
  np.testing.assert_allclose(export.compact_apply(graph, params, x), gated_logits(net, x),
                             rtol=1e-5, atol=1e-5)
  layers = accounting.count(graph, accounting.deterministic_kept(graph.log_alphas(net)))
  # BN's scale and shift, and a conv's own bias if it has one, fold into one bias per kept output.
  folded = sum((l.per_output - 1) * l.kept_out for l in layers if l.name != "head")
  params_kept, _ = accounting.totals(layers)
  assert export.num_params(params) == params_kept - folded
  assert params_kept < accounting.totals(accounting.count(graph, None))[0]


def test_closed_channels_leave_the_compact_network():
  net = gated_net()
  params = compact(net)
  assert params["block3/branch5"]["kernel"].shape[-1] == 0
  assert params["block3/branch5_reduce"]["kernel"].shape[-1] == 0  # it fed only the closed branch
  for name in ("branch1", "branch3_reduce", "branch5_reduce", "branch_pool"):
    assert params[f"block6/{name}"]["kernel"].shape[2] == 0  # block 5 (0-based 4) is closed
  kept = accounting.deterministic_kept(graph_of(net).log_alphas(net))
  assert params["head"]["kernel"].shape == (
      sum(kept[f"block8/{b}"].channels for b in googlenet.BRANCHES), CLASSES)


@pytest.mark.parametrize("use_gate", [True, False])
def test_compact_parameters_are_the_kept_ones_less_folded_batch_norm(use_gate):
  net = gated_net(use_gate=use_gate)
  summary = accounting.report(graph_of(net), graph_of(net).log_alphas(net))
  # BN's scale and shift fold into each conv's kernel and bias: 2 fewer per kept output.
  folded = sum(2 * l["kept_out"] for l in summary["layers"] if l["name"] != "head")
  assert export.num_params(compact(net)) == summary["params_kept"] - folded
  if not use_gate:
    assert summary["params_kept"] == summary["params_full"]


def test_verify_reports_agreement_and_refuses_a_wrong_network():
  net = gated_net()
  params = compact(net)
  x = np.asarray(images(10))
  labels = np.asarray(gated_logits(net, x).argmax(-1))
  result = export.verify(net, graph_of(net), params, x, labels, batch_size=4)
  assert result["max_abs_logit_diff"] < 1e-5
  assert result["test_accuracy_gated"] == result["test_accuracy_compact"] == 1.0
  assert result["params_compact"] == export.num_params(params)
  wrong = jax.tree.map(lambda a: a, params)
  wrong["block8/branch1"]["bias"] = wrong["block8/branch1"]["bias"] + 0.1
  with pytest.raises(RuntimeError, match="differ"):
    export.verify(net, graph_of(net), wrong, x, labels, batch_size=4)


MEAN, STD = np.array([120.0, 110.0, 100.0]), np.array([60.0, 65.0, 70.0])
# A fresh Python that has JAX but never imports l0jax: the export's file and JSON suffice.
STANDALONE = """
import json, sys
import jax, numpy as np
folder = sys.argv[1]
info = json.load(open(f"{folder}/inference.json"))
exported = jax.export.deserialize(bytearray(open(f"{folder}/inference.jax_export", "rb").read()))
images = np.load(f"{folder}/../images.npy")
assert images.dtype == np.dtype(info["input_dtype"])
assert list(images.shape[1:]) == info["input_shape"]
np.save(f"{folder}/../logits.npy", np.asarray(exported.call(images)))
assert not [m for m in sys.modules if m.startswith("l0jax")]
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A gated network and its export, from uint8 images."""
  net = gated_net()
  folder = tmp_path_factory.mktemp("export") / "export"
  uint8 = np.random.default_rng(0).integers(0, 256, (4, HW, HW, 3), dtype=np.uint8)
  export.save(folder, graph_of(net), compact(net), uint8, MEAN, STD, {"dataset": "fixture"},
              {"checkpoint_step": 14})
  return net, folder


def normalized(images):
  return (images.astype(np.float32) - MEAN.astype(np.float32)) / STD.astype(np.float32)


def test_export_takes_uint8_images_of_any_batch_size_and_says_so(saved):
  net, folder = saved
  x = np.random.default_rng(1).integers(0, 256, (7, HW, HW, 3), dtype=np.uint8)
  np.testing.assert_allclose(export.load_inference(folder)(x), gated_logits(net, normalized(x)),
                             rtol=1e-5, atol=1e-5)
  info = json.loads((folder / export.INFO_FILE).read_text())
  assert info == {"dataset": "fixture", "input_shape": [HW, HW, 3], "input_dtype": "uint8",
                  "num_classes": CLASSES, "mean": MEAN.tolist(), "std": STD.tolist(),
                  "output": "logits, float32 [batch, num_classes]", "manifest": export.MANIFEST}
  exported = jax.export.deserialize(bytearray((folder / export.ARTIFACT).read_bytes()))
  assert set(exported.platforms) == set(export.PLATFORMS)
  assert json.loads((folder / export.METRICS_FILE).read_text()) == {"checkpoint_step": 14}
  assert sorted(os.listdir(folder.parent)) == ["export"]  # no temporary folder left
  with pytest.raises(ValueError, match="takes uint8 images"):
    export.load_inference(folder)(normalized(x))


def test_export_runs_in_a_fresh_process_without_l0jax(saved):
  net, folder = saved
  x = np.random.default_rng(2).integers(0, 256, (5, HW, HW, 3), dtype=np.uint8)
  np.save(folder.parent / "images.npy", x)
  subprocess.run([sys.executable, "-c", STANDALONE, str(folder)], check=True, cwd=folder.parent,
                 env={**os.environ, "JAX_PLATFORMS": "cpu"})
  np.testing.assert_allclose(np.load(folder.parent / "logits.npy"),
                             gated_logits(net, normalized(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("damage,named", [
    (lambda f: (f / export.ARTIFACT).unlink(), export.ARTIFACT),
    (lambda f: (f / export.ARTIFACT).write_bytes((f / export.ARTIFACT).read_bytes()[:500]),
     export.ARTIFACT),
    (lambda f: (f / export.INFO_FILE).write_text("{"), export.INFO_FILE),
    # Valid JSON of the wrong type.
    (lambda f: (f / export.INFO_FILE).write_text("[]"), export.INFO_FILE),
    (lambda f: (f / export.INFO_FILE).write_text('{"input_shape": "abc"}'), export.INFO_FILE),
    (lambda f: (f / export.MANIFEST).write_text("[]"), f"{export.MANIFEST} is damaged"),
    (lambda f: (f / export.MANIFEST).write_text("{"), f"{export.MANIFEST} is damaged"),
    # This version's export always has a manifest: one deleted is not taken for an old export.
    (lambda f: (f / export.MANIFEST).unlink(), f"its {export.MANIFEST} is missing"),
])
def test_a_damaged_export_names_the_file(saved, tmp_path, damage, named):
  folder = tmp_path / "export"
  shutil.copytree(saved[1], folder)
  damage(folder)
  with pytest.raises(UserError, match=named) as e:
    export.load_inference(folder)
  assert "\n" not in str(e.value) and "float32 images" not in str(e.value)
  with pytest.raises(UserError, match="no exported network: it does not exist"):
    export.load_inference(tmp_path / "nothing")


def test_only_an_export_from_before_manifests_loads_without_one(saved, tmp_path):
  folder = tmp_path / "export"
  shutil.copytree(saved[1], folder)
  (folder / export.MANIFEST).unlink()
  info = json.loads((folder / export.INFO_FILE).read_text())
  del info["manifest"]
  (folder / export.INFO_FILE).write_text(json.dumps(info))
  x = uint8_images(2, 3)
  np.testing.assert_allclose(export.load_inference(folder)(x), export.load_inference(saved[1])(x))
  (folder / export.ARTIFACT).unlink()  # Older still: before the artifact, float32 images.
  with pytest.raises(UserError, match="takes float32 images"):
    export.load_inference(folder)


def uint8_images(n, seed):
  return np.random.default_rng(seed).integers(0, 256, (n, HW, HW, 3), dtype=np.uint8)


def test_an_export_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
  """A save that dies before its renames leaves the previous export, and so does one killed
  between its two renames once the next save has begun; a folder mixing two exports is refused."""
  first = gated_net(seed=0)
  folder = tmp_path / "export"
  save = lambda params, metrics: export.save(folder, graph_of(first), params, uint8_images(2, 0),
                                             MEAN, STD, {}, metrics)
  save(compact(first), {"net": "first"})
  x = uint8_images(3, 2)
  want = gated_logits(first, normalized(x))

  def fail(*args, **kwargs):
    raise RuntimeError("killed")
  second = compact(gated_net(seed=1))
  monkeypatch.setattr(export, "_check_close", fail)  # once every file of the new one is written
  for killed_between_renames in (False, True):
    if killed_between_renames:
      folder.rename(tmp_path / ".export.old")
    with pytest.raises(RuntimeError, match="killed"):
      save(second, {"net": "second"})
    np.testing.assert_allclose(export.load_inference(folder)(x), want, rtol=1e-5, atol=1e-5)
    assert json.loads((folder / export.METRICS_FILE).read_text()) == {"net": "first"}

  artifact = folder / export.ARTIFACT
  artifact.write_bytes(artifact.read_bytes() + b" ")  # as if copied over from another export
  with pytest.raises(UserError, match=f"not one whole export: 1 file.*{export.ARTIFACT}"):
    export.load_inference(folder)


def test_an_export_killed_while_replacing_the_previous_leaves_one_of_them(tmp_path, monkeypatch):
  """The process dies right after the first rename of the folders (simulated): the swap is one
  step where the file system allows it, and otherwise the previous export is read until the next
  save puts it back."""
  first, second = gated_net(seed=0), gated_net(seed=1)
  x = uint8_images(3, 2)
  want = {"first": gated_logits(first, normalized(x)), "second": gated_logits(second, normalized(x))}
  path_type = type(epath.Path(tmp_path))  # epath's concrete class, whose rename save calls
  real_rename = path_type.rename

  def rename_then_die(self, target):
    real_rename(self, target)
    if self.name == "export":  # The previous export, moved aside (Orbax renames its own too).
      raise SystemExit("killed")

  for atomic in (True, False):
    folder = tmp_path / f"atomic_{atomic}" / "export"
    save = lambda net, name: export.save(folder, graph_of(net), compact(net), uint8_images(2, 0),
                                         MEAN, STD, {}, {"net": name})
    save(first, "first")
    with monkeypatch.context() as patched:
      patched.setattr(path_type, "rename", rename_then_die)
      if not atomic:
        patched.setattr(export, "_exchange", lambda a, b: False)
      try:
        save(second, "second")
      except SystemExit:
        pass
    np.testing.assert_allclose(export.load_inference(folder)(x),
                               want["second" if atomic else "first"], rtol=1e-5, atol=1e-5)
    save(second, "second")
    assert json.loads((folder / export.METRICS_FILE).read_text()) == {"net": "second"}
    assert sorted(os.listdir(folder.parent)) == ["export"]


def test_a_full_disk_during_an_export_names_the_file_absolute(tmp_path, monkeypatch):
  """The write fails once the file is open (no file name in Python's OSError), from a relative
  export folder; the previous export stays."""
  monkeypatch.chdir(tmp_path)
  net = gated_net()
  path_type = type(epath.Path(tmp_path))

  def full(self, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(path_type, "write_bytes", full)
  with pytest.raises(OSError) as e:
    export.save("export", graph_of(net), compact(net), uint8_images(2, 0), MEAN, STD, {}, {})
  assert os_failure(e.value) == (f"No space left on device "
                                 f"({tmp_path / '.export.tmp' / export.ARTIFACT})")
