"""The versions of the files a run and an export write, and how a file of an older one reads.

No file carries a version number: a file's version is the newest change below that it shows.
Each reader asks here what a file from before a change means, so that the history of the
formats is told once, here, and every file of every version still loads:

  config.json  1  the first runs.
               2  `val_split`: a config without it validated on the seeded split
                  (`saved_config`).
  checkpoints  1  step, params, batch_stats and opt_state. A gate's log_alpha is a Param on
                  disk then and now (`gates.LogAlpha` is one), and a run with gate_lr_scale=1
                  keeps version 1's optimizer state (`optimizer.create_optimizer`).
               2  a budget's `lagrangian`, which only a run pruned to one saves (`saved_fields`).
  export/      1  float32 images in, no jax.export artifact.
               2  the artifact, of the data set's uint8 images.
               3  a manifest of every file's hash, that inference.json names
                  (`export_without_manifest`).
"""

from typing import Any, Mapping

from absl import logging
from etils import epath

from l0jax.errors import UserError

# config.json: by the version that added them, the fields whose default today is not what a
# config saved before meant; a field missing from it reads as that.
CONFIG_FIELDS = {2: {"val_split": "seeded"}}


def saved_config(saved: Mapping[str, Any]) -> dict[str, Any]:
  """A saved config's fields, with those it predates as they were then."""
  before = {field: value for fields in CONFIG_FIELDS.values() for field, value in fields.items()}
  return {**before, **saved}


def saved_fields(state: tuple) -> dict[str, Any]:
  """A NamedTuple state as a checkpoint holds it: its fields, without those that are None.

  So a state with a field added since version 1 (a budget's multipliers, None
  in a run without one) saves exactly as before, and older checkpoints restore.
  """
  return {k: v for k, v in state._asdict().items() if v is not None}


def export_without_manifest(export_dir: epath.Path, info: Mapping[str, Any],
                            manifest: str) -> None:
  """An export folder whose `manifest` file is missing: refused where its `info` names one
  (version 3 always has it), else loaded, with a warning, as the version 2 it is."""
  if info.get("manifest") == manifest:
    raise UserError(f"{export_dir} is not one whole export: its {manifest} is missing; "
                    "export again")
  logging.warning("%s has no %s (it was exported before exports had one): whether its files "
                  "come from one export cannot be checked; export again to be sure.",
                  export_dir, manifest)


def export_missing(export_dir: epath.Path, name: str, artifact: str,
                   manifest: str) -> UserError:
  """The refusal of an export folder without its file `name`: one with neither the `artifact`
  nor a `manifest` is a version 1 export, which took float32 images; any other is damaged."""
  version_1 = name == artifact and not (export_dir / manifest).exists()
  return UserError(f"{export_dir} holds no exported network: {name} is missing " + (
      "(an export made before it existed takes float32 images: export the run again)"
      if version_1 else "(export the run again)"))
