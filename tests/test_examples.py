"""The examples run end to end at a tiny size: gated, trained, counted, exported, reloaded."""

import json
import pathlib
import subprocess
import sys

import pytest
from flax import nnx

import l0jax

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))
import custom_cnn  # pylint: disable=wrong-import-position
import resnet18  # pylint: disable=wrong-import-position
import stated_graph  # pylint: disable=wrong-import-position


def assert_exported(metrics: dict, export_dir: pathlib.Path) -> None:
  """The export gives the gated network's logits, and says so in its metrics file."""
  assert metrics["max_abs_logit_diff"] < 1e-4
  assert metrics["test_accuracy_gated"] == metrics["test_accuracy_compact"] == 1.0
  saved = json.loads((export_dir / "export_metrics.json").read_text())
  assert saved["params_compact"] == metrics["params_compact"]


@pytest.mark.parametrize("example, gated_layer", [(custom_cnn, "net/branch3"),
                                                  (stated_graph, "conv_c")],
                         ids=["traced", "stated"])
def test_a_network_is_pruned_with_the_penalty_and_exported(example, gated_layer, tmp_path,
                                                            capsys):
  metrics = example.main(str(tmp_path / "export"), width=4, image_hw=8, steps=3)
  out = capsys.readouterr().out
  assert f"\n{gated_layer} " in out and "gated channels" in out  # the cost table
  assert_exported(metrics, tmp_path / "export")


@pytest.mark.parametrize("network, gated", [
    (lambda: custom_cnn.SmallCNN(4, 1, rngs=nnx.Rngs(0)),
     ["net/stem", "net/branch1", "net/branch3", "net/conv"]),
    # The first conv of each block: an add reads the others' outputs.
    (lambda: resnet18.ResNet18(1 / 16, 1, rngs=nnx.Rngs(0)),
     [f"net/layer{i}/{j}/conv1" for i in range(1, 5) for j in range(2)]),
], ids=["custom_cnn", "resnet18"])
def test_the_examples_networks_are_gated_where_their_channels_are_their_own(network, gated):
  x = custom_cnn.synthetic_data(2, 8, 1, 10, 0).x
  graph = l0jax.trace_graph(l0jax.gate_network(network(), x, rngs=nnx.Rngs(1)), x)
  assert [l.name for l in graph.layers if l.gate] == gated


def test_resnet18_is_pruned_to_its_mac_budget_and_exported(tmp_path, capsys):
  metrics = resnet18.main(str(tmp_path / "export"), target_macs=0.6, width=1 / 16, image_hw=8,
                          steps=4, settled_steps=1)
  out = capsys.readouterr().out
  assert "layer4/1/conv1" in out and "shortcut" in out  # the cost table, projections in it
  assert "under the Lagrangian, the expected kept fraction of MACs reached" in out
  # Settled at most the target, and close below it: settling reopens every channel that fits.
  assert 0.55 <= metrics["macs_kept_fraction"] <= 0.6
  assert_exported(metrics, tmp_path / "export")


def test_a_budget_below_what_the_network_can_reach_is_one_line():
  run = subprocess.run([sys.executable, str(EXAMPLES / "resnet18.py"), "--export_dir=unused",
                        "--target_macs=0.01", "--width=0.0625", "--image_hw=8"],
                       capture_output=True, text=True, check=False)
  assert run.returncode == 1 and run.stdout == ""
  assert run.stderr.count("\n") == 1 and "--target_macs=0.01 is outside [" in run.stderr
