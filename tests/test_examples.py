"""examples/custom_cnn.py, a user's own CNN gated with l0jax, runs end to end at a tiny size."""

import importlib.util
import json
import pathlib

import numpy as np

EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "custom_cnn.py"


def test_the_custom_module_example_trains_reports_and_exports(tmp_path, capsys):
  spec = importlib.util.spec_from_file_location("custom_cnn", EXAMPLE)
  example = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(example)
  metrics = example.main(str(tmp_path / "export"), width=4, image_hw=8, steps=3)
  out = capsys.readouterr().out
  assert "conv_a" in out and "parameters" in out and "MACs" in out  # the cost table
  assert metrics["max_abs_logit_diff"] < 1e-4
  assert metrics["test_accuracy_gated"] == metrics["test_accuracy_compact"] == 1.0
  saved = json.loads((tmp_path / "export" / "export_metrics.json").read_text())
  assert saved["params_compact"] == metrics["params_compact"]
  assert np.isfinite(saved["max_abs_logit_diff"])
