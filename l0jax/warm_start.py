"""What a run starts from must be its own network: a workdir resumed, or `init_from`'s weights.

`init_from` is a trained run whose checkpoint gives this run its weights
(`load_weights`), its gates too where the run keeps them fixed (`run_config.RETRAIN`).
"""

from typing import Any, Collection

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from l0jax import checkpoints, gates, run_config, workdirs
from l0jax.errors import UserError


def architecture_differences(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                             fields: Collection[str] = run_config.ARCHITECTURE_FIELDS
                             ) -> list[str]:
  return [f"{f}: {saved.get(f)!r} there, {config.get(f)!r} here" for f in fields
          if run_config.built(saved, f) != run_config.built(config, f)]


def check_same_network(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses to train into a workdir that holds a run of another network or split.

  Called before anything is written, so that the refused workdir stays as it was.
  """
  if not (epath.Path(workdir) / workdirs.CONFIG_FILE).exists():
    return
  # Its split too: a resumed run trains on the examples it started with.
  differences = architecture_differences(workdirs.load_config(workdir), config,
                                         run_config.ARCHITECTURE_FIELDS + ("val_split",))
  if differences:
    raise UserError(f"{workdir} holds a run of a different network or split "
                    f"({'; '.join(differences)}); "
                    "it was left untouched. Train into another workdir, or resume with the "
                    f"saved settings in {epath.Path(workdir) / workdirs.CONFIG_FILE}")


def init_source(init_from: str, config: ml_collections.ConfigDict, with_gates: bool
                ) -> tuple[ocp.CheckpointManager, int]:
  """The manager and `init_checkpoint` step of `init_from`, once it fits this network.

  Its gates are only needed when they are taken (`with_gates`).
  """
  if not epath.Path(init_from).is_dir():
    raise UserError(f"init_from={init_from} does not exist (it should be a training workdir)")
  # The gates' presence matters only when they are taken.
  fields = tuple(f for f in run_config.ARCHITECTURE_FIELDS
                 if f not in run_config.GATE_FIELDS or with_gates)
  differences = architecture_differences(workdirs.load_config(init_from), config, fields)
  if differences:
    raise UserError(f"init_from={init_from} is a different network: {'; '.join(differences)}")
  return checkpoints.chosen_step(init_from, config.init_checkpoint)


def load_weights(init_from: str, config: ml_collections.ConfigDict, params: nnx.State,
                 batch_stats: nnx.State, *, with_gates: bool) -> tuple[nnx.State, nnx.State]:
  """`params` and `batch_stats` with their arrays replaced by those of `init_from`'s checkpoint.

  Gates are left as initialised (at `droprate_init`), so that a trained
  baseline can be fine-tuned with gates, unless `with_gates` takes those of a
  pruning run. Arrays must match in shape, one for one.
  """
  mngr, step = init_source(init_from, config, with_gates)
  restored = checkpoints.restore_step(mngr, step)
  source = {**_flat(restored["params"]), **{f"bn:{k}": v for k, v in
                                            _flat(restored["batch_stats"]).items()}}

  def take(prefix, tree):
    gate_paths = gates.gate_paths(tree)

    def replace(path, leaf):
      key = prefix + _path_str(path)
      if path in gate_paths and not with_gates:
        return leaf
      if key not in source or source[key].shape != leaf.shape:
        raise UserError(f"init_from={init_from} does not fit this network at {key}")
      return jax.numpy.asarray(source[key], leaf.dtype)
    return jax.tree_util.tree_map_with_path(replace, tree)

  return take("", params), take("bn:", batch_stats)


def _path_str(path) -> str:
  """A leaf's path as "a/0/b", whatever containers Orbax restored it into."""
  keys = (str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
  return "/".join(k for k in keys if k != "value")


def _flat(tree) -> dict[str, Any]:
  return {_path_str(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
