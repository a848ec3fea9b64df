"""Everything a workdir holds between runs: the resolved config and Orbax checkpoints.

Checkpoints are written by Orbax's CheckpointManager, which commits a step
only once it is fully on disk, keeping the newest few plus the best by
validation accuracy.
"""

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from l0jax import config as config_lib
from l0jax.errors import UserError

CONFIG_FILE = "config.json"
BEST_METRIC = "val_accuracy"


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
  """Writes `text` so that a reader sees the old file or the new one, never half of one."""
  path = epath.Path(path)
  tmp = path.parent / f".{path.name}.tmp"
  tmp.write_text(text)
  tmp.rename(path)


def write_json_atomically(path: str | os.PathLike, obj: Any) -> None:
  write_text_atomically(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  write_json_atomically(epath.Path(workdir) / CONFIG_FILE, json.loads(config.to_json_best_effort()))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise UserError(f"{workdir} holds no training run (no {CONFIG_FILE}); train into it first")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def architecture_differences(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                             fields=config_lib.ARCHITECTURE_FIELDS) -> list[str]:
  return [f"{f}: {saved.get(f)!r} there, {config.get(f)!r} here" for f in fields
          if saved.get(f) != config.get(f)]


def manager(workdir: str, keep: int = 1, read_only: bool = False) -> ocp.CheckpointManager:
  """The run's CheckpointManager: the newest `keep` checkpoints plus the best by validation."""
  best = lambda metrics: metrics[BEST_METRIC]
  policy = ocp.checkpoint_managers.AnyPreservationPolicy([
      ocp.checkpoint_managers.LatestN(n=keep),
      ocp.checkpoint_managers.BestN(get_metric_fn=best, n=1),
  ])
  options = ocp.CheckpointManagerOptions(
      best_fn=best, best_mode="max", preservation_policy=None if read_only else policy,
      read_only=read_only, create=not read_only)
  return ocp.CheckpointManager(epath.Path(workdir).absolute() / "checkpoints", options=options)


def best_step(workdir: str) -> tuple[ocp.CheckpointManager, int]:
  """A read-only manager of a finished (or running) workdir and its best step."""
  mngr = manager(workdir, read_only=True)
  step = mngr.best_step()
  if step is None:
    raise UserError(f"{workdir} has no checkpoint yet; train into it first")
  return mngr, step


def _path_str(path) -> str:
  """A leaf's path as "a/0/b", whatever containers Orbax restored it into."""
  keys = (str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
  return "/".join(k for k in keys if k != "value")


def _flat(tree) -> dict[str, Any]:
  return {_path_str(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def load_weights(init_from: str, config: ml_collections.ConfigDict, params, batch_stats):
  """`params` and `batch_stats` with every non-gate array replaced by `init_from`'s best checkpoint.

  Gates are left as initialised (at `droprate_init`), so a trained baseline can
  be fine-tuned with gates. Arrays must match in shape, one for one.
  """
  if not epath.Path(init_from).exists():
    raise UserError(f"init_from={init_from} does not exist")
  saved = load_config(init_from)
  differences = architecture_differences(saved, config, ("dataset", "width_multiplier",
                                                         "synthetic_image_size"))
  if differences:
    raise UserError(f"init_from={init_from} is a different network: {'; '.join(differences)}")
  mngr, step = best_step(init_from)
  restored = mngr.restore(step, args=ocp.args.StandardRestore())
  source = {**_flat(restored["params"]), **{f"bn:{k}": v for k, v in
                                            _flat(restored["batch_stats"]).items()}}

  def take(prefix, tree):
    def replace(path, leaf):
      key = prefix + _path_str(path)
      if "/gates/" in key:
        return leaf
      if key not in source or source[key].shape != leaf.shape:
        raise UserError(f"init_from={init_from} does not fit this network at {key}")
      return jax.numpy.asarray(source[key], leaf.dtype)
    return jax.tree_util.tree_map_with_path(replace, tree)

  return take("", params), take("bn:", batch_stats)
