"""Every older version of a file still reads (l0jax/versions.py). A run's files of each version
are exercised end to end too: configs in test_train and test_errors, exports in test_export."""

import json
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from conftest import tiny_config
from l0jax import checkpoints, gates, versions, workdirs
from l0jax.errors import UserError


def test_a_config_from_before_val_split_validated_on_the_seeded_split(tmp_path):
  saved = tiny_config().to_dict()
  del saved["val_split"]
  (tmp_path / workdirs.CONFIG_FILE).write_text(json.dumps(saved))
  assert workdirs.load_config(str(tmp_path)).val_split == "seeded"
  assert versions.saved_config({"val_split": "hash"}) == {"val_split": "hash"}


class State(NamedTuple):
  params: nnx.State
  lagrangian: jnp.ndarray | None = None


class Gated(nnx.Module):
  def __init__(self, log_alpha: type[nnx.Param], value: list[float]):
    self.kernel = nnx.Param(jnp.arange(4.0))
    self.log_alpha = log_alpha(jnp.array(value))


def test_a_checkpoint_of_version_1_restores_its_plain_param_gates_without_multipliers(tmp_path):
  mngr = checkpoints.manager(str(tmp_path))
  old = State(nnx.state(Gated(nnx.Param, [3.0, -4.0])))
  assert list(versions.saved_fields(old)) == ["params"]  # no multipliers saved: version 1's fields
  mngr.save(1, args=ocp.args.StandardSave(versions.saved_fields(old)),
            metrics={checkpoints.BEST_METRIC: 0.5})
  mngr.wait_until_finished()
  target = State(nnx.state(Gated(gates.LogAlpha, [0.0, 0.0])))
  restored = checkpoints.restore_step(checkpoints.manager(str(tmp_path), read_only=True), 1,
                                      target)
  assert restored.lagrangian is None
  assert isinstance(restored.params["log_alpha"], gates.LogAlpha)
  np.testing.assert_array_equal(restored.params["log_alpha"][...], [3.0, -4.0])
  assert len(gates.gate_paths(restored.params)) == 1


def test_an_export_of_each_older_version_is_told_from_a_damaged_one(tmp_path):
  # Version 2: no manifest, and an inference.json that names none.
  versions.export_without_manifest(tmp_path, {"input_shape": [8, 8, 3]}, "manifest.json")
  with pytest.raises(UserError, match="its manifest.json is missing"):  # version 3, damaged
    versions.export_without_manifest(tmp_path, {"manifest": "manifest.json"}, "manifest.json")
  # Version 1: neither the artifact nor a manifest.
  assert "takes float32 images" in str(versions.export_missing(
      tmp_path, "inference.jax_export", "inference.jax_export", "manifest.json"))
  (tmp_path / "manifest.json").write_text("{}")
  assert "(export the run again)" in str(versions.export_missing(
      tmp_path, "inference.jax_export", "inference.jax_export", "manifest.json"))
