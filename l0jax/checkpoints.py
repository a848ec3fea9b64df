"""A run's Orbax checkpoints: the manager that keeps them, and restoring one, the newest or the
best, with damaged steps set aside.

Orbax writes a step into a temporary directory that it renames only once it
is complete, so a killed save never looks like a checkpoint. A step damaged
later (a truncated copy, a failing disk) is found when it is restored, and set
aside for an older one. Every process writes its part of a checkpoint.
"""

import time
from typing import Any

import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from l0jax import locking, versions, workdirs
from l0jax.errors import UserError, one_line

# The metric Orbax keeps the best checkpoint by; a checkpoint's metrics are saved beside it.
BEST_METRIC = "val_accuracy"


def manager(workdir: str, keep: int = 1, read_only: bool = False) -> ocp.CheckpointManager:
  """The run's CheckpointManager: the newest `keep` checkpoints plus the best by validation.

  A writing manager first removes the temporary directories of saves that a
  killed process left unfinished. A read-only one creates, cleans and deletes
  nothing (it is not Orbax's read_only mode, which logs warnings on every use).
  """
  best = lambda metrics: metrics[BEST_METRIC]
  policy = ocp.checkpoint_managers.AnyPreservationPolicy([
      ocp.checkpoint_managers.LatestN(n=keep),
      ocp.checkpoint_managers.BestN(get_metric_fn=best, n=1),
  ])
  options = ocp.CheckpointManagerOptions(
      best_fn=best, best_mode="max", preservation_policy=None if read_only else policy,
      create=not read_only, cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(epath.Path(workdir).absolute() / workdirs.CHECKPOINTS_DIR, options=options)


def _restore_into(mngr: ocp.CheckpointManager, step: int, target: tuple) -> tuple:
  """A checkpoint restored into the structure of the NamedTuple `target`
  (`versions.saved_fields`)."""
  restored = mngr.restore(step, args=ocp.args.StandardRestore(versions.saved_fields(target)))
  return type(target)(**restored)


def _unreadable(mngr: ocp.CheckpointManager, step: int, e: Exception) -> str:
  return f"{mngr.directory / str(step)} ({one_line(e)})"


def chosen_step(workdir: str, checkpoint: str = "best") -> tuple[ocp.CheckpointManager, int]:
  """A read-only manager of a finished (or running) workdir and its best or last step."""
  try:
    mngr = manager(workdir, read_only=True)
    step = mngr.best_step() if checkpoint == "best" else mngr.latest_step()
  except Exception as e:  # pylint: disable=broad-except  # A damaged step's metrics.
    raise UserError(f"cannot read the checkpoints in {workdir}: {one_line(e)}") from e
  if step is None:
    raise UserError(f"{workdir} has no checkpoint yet; train into it first")
  trainer = locking.holder(workdir)
  if trainer:
    newest = mngr.latest_step()
    logging.warning("%s is being trained by %s: this reads its %s checkpoint, step %d%s.",
                    workdir, trainer, checkpoint, step,
                    f" (the newest is step {newest})" if newest > step else "")
  return mngr, step


def _lister(workdir: str) -> ocp.CheckpointManager:
  """A manager that only lists the complete steps: metrics are read later, step by step."""
  options = ocp.CheckpointManagerOptions(create=False, lightweight_initialize=True)
  return ocp.CheckpointManager(epath.Path(workdir).absolute() / workdirs.CHECKPOINTS_DIR, options=options)


def has_checkpoints(workdir: str) -> bool:
  return bool(_lister(workdir).all_steps())


def restore_latest(workdir: str, target: Any) -> tuple[int, Any] | None:
  """(step, state) of the newest checkpoint that restores into `target`'s structure; None if none.

  A step that cannot be restored (truncated, missing files, unreadable
  metrics) is skipped with a warning, and moved to `workdirs.CORRUPT_DIR` once an
  older one has restored, so that the resumed run can write that step again.
  If every step is damaged, nothing is moved and a UserError names them all:
  never a silent restart from scratch over a run.
  """
  workdir = epath.Path(workdir)
  mngr = _lister(str(workdir))
  damaged = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      mngr.metrics(step)[BEST_METRIC]  # pylint: disable=expression-not-assigned
      state = _restore_into(mngr, step, target)
    except Exception as e:  # pylint: disable=broad-except  # Orbax and TensorStore raise all sorts.
      logging.warning("Cannot restore the checkpoint %s; trying an older one.",
                      _unreadable(mngr, step, e))
      damaged.append((step, e))
      continue
    for bad, _ in damaged if workdirs.is_primary_process() else []:  # Every process found it; one moves it.
      aside = workdir / workdirs.CORRUPT_DIR / f"{bad}-{time.strftime('%Y%m%d-%H%M%S')}"
      aside.parent.mkdir(exist_ok=True)
      (mngr.directory / str(bad)).rename(aside)
      logging.warning("Moved the damaged checkpoint of step %d to %s; resuming from step %d.",
                      bad, aside, step)
    return step, state
  if damaged:
    raise UserError(f"no checkpoint in {mngr.directory} can be restored, and the run was left "
                    "untouched: " + "; ".join(_unreadable(mngr, s, e) for s, e in damaged))
  return None


def restore_step(mngr: ocp.CheckpointManager, step: int, target: tuple | None = None) -> Any:
  """One checkpoint, into `target`'s structure (a NamedTuple) or as saved; damaged: UserError."""
  try:
    if target is None:
      return mngr.restore(step, args=ocp.args.StandardRestore())
    return _restore_into(mngr, step, target)
  except Exception as e:  # pylint: disable=broad-except  # Orbax and TensorStore raise all sorts.
    raise UserError(f"cannot restore {_unreadable(mngr, step, e)}") from e


def check_history_has_checkpoints(workdir: str) -> None:
  """Refuses to train afresh over the history of epochs whose checkpoints are gone (deleted, or
  not copied with the rest): starting again would rewrite that history.

  A record of the first epoch alone is a first save that a kill cut short; training
  does that epoch again. Called before anything is written.
  """
  if has_checkpoints(workdir):
    return
  epochs = {e for e, _ in workdirs.read_history(workdir)[0]}
  if epochs - {0}:
    raise UserError(f"{epath.Path(workdir) / workdirs.HISTORY_FILE} records {len(epochs)} epochs but "
                    f"{workdir} has no checkpoint to resume them from; it was left untouched. "
                    "Resume a copy that has its checkpoints, train into another workdir, or "
                    f"delete {workdirs.HISTORY_FILE} to train this one again from the start")
