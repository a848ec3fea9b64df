"""The ONNX model of the compact network gives the gated network's logits in onnxruntime."""

import json
import sys

import numpy as np
import pytest
from flax import nnx

from conftest import hiding, run_main, tiny_flags
from test_export import (CLASSES, HW, MEAN, OPEN, PARTIAL, PRUNED, STD, gated_logits,
                         gated_net, normalized, randomize, uint8_images)
from l0jax import export, onnx_export, resnet, vgg
from l0jax.errors import UserError

needs_onnx = pytest.mark.skipif(not onnx_export.available(),
                                reason="the onnx extra is not installed")


def mixed(closed):
  """log_alpha: the gates whose path `closed(path)` holds closed whole, the others mixed."""
  def log_alpha(path, shape, rng):
    if closed(path):
      return np.full(shape, PRUNED)
    return rng.choice([PRUNED, PARTIAL, OPEN], shape) + rng.uniform(-1.5, 1.5, shape)
  return log_alpha


NETWORKS = {
    # A closed branch, and a closed block that leaves the next block's convs no inputs.
    "googlenet": lambda: gated_net(closed_block=4),
    # Every branch of the last block closed: the head gives its bias.
    "googlenet_closed_head": lambda: gated_net(closed_block=7),
    # stage 1's second block closed whole (it adds a constant); strided, padded shortcuts.
    "resnet20": lambda: randomize(nnx.eval_shape(lambda: resnet.ResNet(
        CLASSES, 3, depth=20, width_multiplier=0.25, rngs=nnx.Rngs(0))),
        mixed(lambda path: path[1:3] == (0, 1))),
    # Stage widths gated, stage 3's added channels closed whole: its shortcut pads none.
    "resnet20_residual": lambda: randomize(nnx.eval_shape(lambda: resnet.ResNet(
        CLASSES, 3, depth=20, width_multiplier=0.25, gate_residual=True, rngs=nnx.Rngs(0))),
        mixed(lambda path: path[:2] == ("width_gates", 2))),
    # Stages 1 and 2's widths closed: their adds and shortcuts carry no channels.
    "resnet20_residual_closed_stages": lambda: randomize(nnx.eval_shape(lambda: resnet.ResNet(
        CLASSES, 3, depth=20, width_multiplier=0.25, gate_residual=True, rngs=nnx.Rngs(0))),
        mixed(lambda path: path[:2] in (("width_gates", 0), ("width_gates", 1)))),
    # conv2 closed: conv3 reads nothing.
    "vgg11": lambda: randomize(nnx.eval_shape(lambda: vgg.VGG(
        CLASSES, 3, depth=11, width_multiplier=0.125, rngs=nnx.Rngs(0))),
        mixed(lambda path: path[1] == 1)),
}


def assert_close(got, want):
  """Within the export's tolerance: RTOL of the largest |logit| (at least 1)."""
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0,
                             atol=export.RTOL * max(1.0, float(np.max(np.abs(want)))))


@needs_onnx
@pytest.mark.parametrize("name", NETWORKS)
def test_onnx_logits_equal_gated_ones_at_any_batch_size(name, tmp_path):
  import onnx  # pylint: disable=import-outside-toplevel
  net = NETWORKS[name]()
  graph = net.channel_graph(HW)
  proto = onnx_export.model(graph, export.compact_params(net, graph), MEAN, STD)
  onnx.checker.check_model(proto, full_check=True)
  assert [n.op_type for n in proto.graph.node].count("Transpose") == 1  # NHWC -> NCHW, once
  path = tmp_path / onnx_export.FILE
  path.write_bytes(proto.SerializeToString())
  infer = onnx_export.session(path)
  for batch in (1, 5):
    x = uint8_images(batch, seed=batch)
    assert_close(infer(x), np.asarray(gated_logits(net, normalized(x))))


@needs_onnx
def test_export_writes_inference_onnx_into_the_manifest_and_checks_it(tmp_path, monkeypatch):
  net = gated_net()
  graph = net.channel_graph(HW)
  folder = tmp_path / "export"
  save = lambda params: export.save(folder, graph, params, uint8_images(4, 0), MEAN, STD,
                                    {"dataset": "fixture"}, {}, with_onnx=True)
  save(export.compact_params(net, graph))
  info = json.loads((folder / export.INFO_FILE).read_text())
  assert info["onnx"] == {
      "file": "inference.onnx", "opset": onnx_export.OPSET, "input": "images",
      "output": "logits", "runs_on": "onnxruntime (CPUExecutionProvider)",
      "verified_with": {"onnx": sys.modules["onnx"].__version__,
                        "onnxruntime": sys.modules["onnxruntime"].__version__}}
  assert onnx_export.FILE in json.loads((folder / export.MANIFEST).read_text())
  x = uint8_images(5, 3)
  assert_close(onnx_export.session(folder / onnx_export.FILE)(x),
               np.asarray(gated_logits(net, normalized(x))))
  # A model that computes something else is refused, and leaves the export as it was.
  wrong = onnx_export.model
  monkeypatch.setattr(onnx_export, "model", lambda graph, params, mean, std: wrong(
      graph, {**params, "head": {**params["head"], "bias": params["head"]["bias"] + 0.1}},
      mean, std))
  with pytest.raises(RuntimeError, match="inference.onnx in onnxruntime and the compact network"):
    save(export.compact_params(gated_net(seed=1), graph))
  assert_close(onnx_export.session(folder / onnx_export.FILE)(x),
               np.asarray(gated_logits(net, normalized(x))))


def test_without_the_extra_onnx_is_refused_in_one_line(monkeypatch):
  for name in onnx_export.PACKAGES:
    monkeypatch.setitem(sys.modules, name, None)
  assert not onnx_export.available()
  with pytest.raises(UserError, match=r"l0jax\[onnx\]") as e:
    onnx_export.require()
  assert "\n" not in str(e.value)


@needs_onnx
def test_main_exports_inference_onnx_if_the_extra_is_installed(tmp_path):
  """By default with the extra, not without it; --export_onnx without it is refused."""
  workdir = str(tmp_path / "gated")
  trained = run_main("--config=configs/gated.py", f"--workdir={workdir}",
                     *tiny_flags(num_epochs=1))
  assert trained.returncode == 0, trained.stderr[-3000:]
  without_onnx = hiding(onnx_export.PACKAGES, tmp_path)
  refused = run_main("--mode=export", "--export_onnx", f"--workdir={workdir}", env=without_onnx)
  assert refused.returncode == 2 and "l0jax[onnx]" in refused.stderr
  assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
  skipped = run_main("--mode=export", f"--workdir={workdir}", env=without_onnx)
  assert skipped.returncode == 0, skipped.stderr[-3000:]
  assert "no inference.onnx: the onnx extra is not installed" in skipped.stdout
  folder = tmp_path / "gated" / "export"
  assert not (folder / onnx_export.FILE).exists()

  exported = run_main("--mode=export", f"--workdir={workdir}")
  assert exported.returncode == 0, exported.stderr[-3000:]
  info = json.loads((folder / export.INFO_FILE).read_text())
  import onnxruntime  # pylint: disable=import-outside-toplevel
  session = onnxruntime.InferenceSession(str(folder / info["onnx"]["file"]))
  x = np.random.default_rng(0).integers(0, 256, (3, *info["input_shape"]), np.uint8)
  logits, = session.run([info["onnx"]["output"]], {info["onnx"]["input"]: x})
  assert_close(logits, np.asarray(export.load_inference(folder)(x)))


def test_the_onnx_flags_are_refused_outside_export_mode(tmp_path):
  result = run_main("--mode=test", "--noexport_onnx", f"--workdir={tmp_path}")
  assert result.returncode == 2
  assert result.stderr.strip() == "error: --export_onnx and --noexport_onnx are for --mode=export"
