"""A workdir, the folder one run lives in: its layout, and the reading and writing of its files.

  config.json           the run's resolved config (`save_config`, `load_config`)
  checkpoints/STEP/     Orbax checkpoints: the newest `keep_checkpoints`, and the best by
                        validation accuracy (`manager`, `chosen_step`, `restore_latest`)
  corrupt_checkpoints/  damaged steps, set aside when an older one is resumed
  history.jsonl         one JSON record per epoch, with every gate's log_alpha
                        (`append_history`, `load_history`, `keep_history_before`)
  events.*              TensorBoard's event files (`writers.MetricWriter`)
  test_metrics.json     what --mode=test measured (`write_test_metrics`, `read_test_metrics`)
  export/               the compact network of --mode=export (`export.save` fills it)
  analysis/             the figures and summary of --mode=analyze
  sweep.log             a sweep member's console output
  lock                  held while the run trains (`training_lock`)

Files are written whole or not at all: a reader sees the old file or the new
one, a history line is appended whole, and Orbax writes a step into a
temporary directory that it renames only once it is complete, so a killed
save never looks like a checkpoint. A step damaged later (a truncated copy, a
failing disk) is found when it is restored, and set aside for an older one.
With several processes (`--multihost`) every one computes the same values and
the primary one writes the files; every process writes its part of a
checkpoint, through Orbax.
"""

import contextlib
import json
import os
import time
from typing import Any, Collection

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx

from l0jax import config as config_lib
from l0jax import gates
from l0jax import locking
from l0jax.errors import UserError

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
# Where damaged steps are moved when an older good one is resumed instead.
CORRUPT_DIR = "corrupt_checkpoints"
HISTORY_FILE = "history.jsonl"
TEST_METRICS_FILE = "test_metrics.json"
EXPORT_DIR = "export"
ANALYSIS_DIR = "analysis"
SWEEP_LOG_FILE = "sweep.log"
# The metric Orbax keeps the best checkpoint by; a checkpoint's metrics are saved beside it.
BEST_METRIC = "val_accuracy"


def write_file(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes `data` to `path`; an OSError names the file, absolute, as `errors.os_failure` reports.

  A write that fails once the file is open (a full disk) raises without a file name.
  """
  path = epath.Path(path)
  try:
    if isinstance(data, str):
      path.write_text(data)
    else:
      path.write_bytes(data)
  except OSError as e:
    raise OSError(e.errno, e.strerror, os.path.abspath(path)) from e


def read_json(path: str | os.PathLike, expected: type, fix: str) -> Any:
  """The JSON value in `path`, a `expected` (dict, list); anything else, or a file that does not
  parse, is a UserError that names the file and says `fix`."""
  try:
    value = json.loads(epath.Path(path).read_text())
  except (OSError, ValueError) as e:  # Cut short, not a file, not UTF-8.
    raise UserError(f"{path} is damaged ({_why(e)}); {fix}") from e
  if not isinstance(value, expected):
    raise UserError(f"{path} is damaged (it holds a {type(value).__name__}, not a JSON "
                    f"{'object' if expected is dict else 'array'}); {fix}")
  return value


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
  """Writes `text` so that a reader sees the old file or the new one, never half of one."""
  path = epath.Path(path)
  tmp = path.parent / f".{path.name}.tmp"
  try:
    write_file(tmp, text)
    tmp.replace(path)  # Not rename: epath's refuses to overwrite, and a resumed run rewrites.
  except OSError:
    tmp.unlink(missing_ok=True)  # A full disk leaves no half-written copy behind.
    raise


def append_line(path: str | os.PathLike, line: str) -> None:
  """Appends `line` and a newline whole, or leaves the file as it was (a full disk, say)."""
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    size = os.fstat(fd).st_size
    data = (line + "\n").encode()
    try:
      while data:  # A write may stop short at a full disk before it fails.
        data = data[os.write(fd, data):]
    except OSError as e:
      os.ftruncate(fd, size)
      raise OSError(e.errno, e.strerror, str(path)) from e
  finally:
    os.close(fd)


def write_json_atomically(path: str | os.PathLike, obj: Any) -> None:
  write_text_atomically(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def is_primary_process() -> bool:
  """Whether this process writes the workdir's own files: config, history, test metrics, export.

  With several processes (`--multihost`) every one computes the same values
  and one writes them. Checkpoints differ: every process writes its part
  through Orbax, which coordinates them.
  """
  return jax.process_index() == 0


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  write_json_atomically(epath.Path(workdir) / CONFIG_FILE, json.loads(config.to_json_best_effort()))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's saved config; fields added since it was saved read as LEGACY_VALUES or defaults."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise UserError(f"{workdir} holds no training run (no {CONFIG_FILE}); train into it first")
  fix = ("it was left as it is; to go on with this run, delete it and train again with the "
         "run's --config (it is written anew and training resumes from the checkpoints)")
  saved = read_json(path, dict, fix)
  config = config_lib.base_config()
  try:
    config.update({**config_lib.LEGACY_VALUES, **saved})
  except (ValueError, TypeError, KeyError, AttributeError) as e:  # A field of a wrong type, or none.
    raise UserError(f"{path} is damaged ({_why(e)}); {fix}") from e
  return config


def architecture_differences(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                             fields: Collection[str] = config_lib.ARCHITECTURE_FIELDS
                             ) -> list[str]:
  return [f"{f}: {saved.get(f)!r} there, {config.get(f)!r} here" for f in fields
          if saved.get(f) != config.get(f)]


def check_same_network(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses to train into a workdir that holds a run of another network or split.

  Called before anything is written, so that the refused workdir stays as it was.
  """
  if not (epath.Path(workdir) / CONFIG_FILE).exists():
    return
  # Its split too: a resumed run trains on the examples it started with.
  differences = architecture_differences(load_config(workdir), config,
                                         config_lib.ARCHITECTURE_FIELDS + ("val_split",))
  if differences:
    raise UserError(f"{workdir} holds a run of a different network or split "
                    f"({'; '.join(differences)}); "
                    "it was left untouched. Train into another workdir, or resume with the "
                    f"saved settings in {epath.Path(workdir) / CONFIG_FILE}")


def check_history_has_checkpoints(workdir: str) -> None:
  """Refuses to train afresh over the history of epochs whose checkpoints are gone (deleted, or
  not copied with the rest): starting again would rewrite that history.

  A record of the first epoch alone is a first save that a kill cut short; training
  does that epoch again. Called before anything is written.
  """
  if has_checkpoints(workdir):
    return
  epochs = {e for e, _ in read_history(workdir)[0]}
  if epochs - {0}:
    raise UserError(f"{epath.Path(workdir) / HISTORY_FILE} records {len(epochs)} epochs but "
                    f"{workdir} has no checkpoint to resume them from; it was left untouched. "
                    "Resume a copy that has its checkpoints, train into another workdir, or "
                    f"delete {HISTORY_FILE} to train this one again from the start")


def training_lock(workdir: str) -> contextlib.AbstractContextManager:
  """Training's hold on `workdir` (its `lock` file), taken by process 0 alone: a run's processes
  share it. A second training process is refused in one line naming the holder."""
  if not is_primary_process():
    return contextlib.nullcontext()
  return locking.held(workdir, "--workdir")


def read_history(workdir: str | os.PathLike) -> tuple[list[tuple[int, str]], list[int]]:
  """(epoch, line) for each intact line of history.jsonl, and the numbers of the damaged lines.

  A last line without its newline was cut short by a crash; it is neither.
  """
  path = epath.Path(workdir) / HISTORY_FILE
  if not path.exists():
    return [], []
  text = path.read_text()
  lines = text.splitlines()
  if lines and not text.endswith("\n"):
    lines.pop()
  records, damaged = [], []
  for number, line in enumerate(lines, 1):
    epoch = _epoch(line)
    if epoch is None:
      damaged.append(number)
    else:
      records.append((epoch, line))
  return records, damaged


def _epoch(line: str) -> int | None:
  """The epoch of a history line: a JSON object whose epoch and step are integers; else None."""
  try:
    record = json.loads(line)
  except ValueError:
    return None
  integers = isinstance(record, dict) and all(
      isinstance(record.get(k), int) and not isinstance(record[k], bool) for k in ("epoch", "step"))
  return record["epoch"] if integers else None


def load_history(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """The run's per-epoch records: what training wrote, less damaged lines (resuming names them)."""
  history = [json.loads(line) for _, line in read_history(workdir)[0]]
  if not history:
    raise UserError(f"{workdir} has no {HISTORY_FILE} entries yet; train into it first")
  return history


def keep_history_before(workdir: str | os.PathLike, epoch: int) -> None:
  """Rewrites history.jsonl with the records of the epochs before `epoch` alone, for a run that
  resumes there and writes the rest again.

  A damaged line is reported, and the file as it was is copied beside it, so
  that no record of an epoch before `epoch` goes silently.
  """
  workdir = epath.Path(workdir)
  records, damaged = read_history(workdir)
  kept = [line for e, line in records if e < epoch]
  if damaged:
    missing = sorted(set(range(epoch)) - {e for e, _ in records})
    copy = workdir / f"{HISTORY_FILE}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    (workdir / HISTORY_FILE).copy(copy)
    logging.warning("%s: line(s) %s are damaged; %s; the file as it was is kept in %s.",
                    workdir / HISTORY_FILE, ", ".join(map(str, damaged)),
                    f"no record is left of epoch(s) {', '.join(str(e + 1) for e in missing)}"
                    if missing else "every epoch before the checkpoint still has its record",
                    copy)
  write_text_atomically(workdir / HISTORY_FILE, "".join(line + "\n" for line in kept))


def append_history(workdir: str | os.PathLike, record: dict[str, Any]) -> None:
  append_line(epath.Path(workdir) / HISTORY_FILE, json.dumps(record))


def write_test_metrics(workdir: str | os.PathLike, metrics: dict[str, Any]) -> None:
  write_json_atomically(epath.Path(workdir) / TEST_METRICS_FILE, metrics)


def read_test_metrics(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """What --mode=test wrote, or None if the run was not tested."""
  path = epath.Path(workdir) / TEST_METRICS_FILE
  if not path.exists():
    return None
  return read_json(path, dict, f"delete it and test the run again (--mode=test --workdir={workdir})")


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
  return ocp.CheckpointManager(epath.Path(workdir).absolute() / CHECKPOINTS_DIR, options=options)


def on_disk(state: tuple) -> dict[str, Any]:
  """A NamedTuple state as it is saved: its fields, without those that are None.

  So a state with a field added since (the multipliers of a budget, None in
  a run without one) saves exactly as before, and old checkpoints restore.
  """
  return {k: v for k, v in state._asdict().items() if v is not None}


def _restore_into(mngr: ocp.CheckpointManager, step: int, target: tuple) -> tuple:
  """A checkpoint restored into the structure of the NamedTuple `target` (see `on_disk`)."""
  restored = mngr.restore(step, args=ocp.args.StandardRestore(on_disk(target)))
  return type(target)(**restored)


def _why(e: Exception) -> str:
  """What Orbax or TensorStore raised, in one line (their messages run to pages)."""
  return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def _unreadable(mngr: ocp.CheckpointManager, step: int, e: Exception) -> str:
  return f"{mngr.directory / str(step)} ({_why(e)})"


def chosen_step(workdir: str, checkpoint: str = "best") -> tuple[ocp.CheckpointManager, int]:
  """A read-only manager of a finished (or running) workdir and its best or last step."""
  try:
    mngr = manager(workdir, read_only=True)
    step = mngr.best_step() if checkpoint == "best" else mngr.latest_step()
  except Exception as e:  # pylint: disable=broad-except  # A damaged step's metrics.
    raise UserError(f"cannot read the checkpoints in {workdir}: {_why(e)}") from e
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
  return ocp.CheckpointManager(epath.Path(workdir).absolute() / CHECKPOINTS_DIR, options=options)


def has_checkpoints(workdir: str) -> bool:
  return bool(_lister(workdir).all_steps())


def restore_latest(workdir: str, target: Any) -> tuple[int, Any] | None:
  """(step, state) of the newest checkpoint that restores into `target`'s structure; None if none.

  A step that cannot be restored (truncated, missing files, unreadable
  metrics) is skipped with a warning, and moved to `CORRUPT_DIR` once an
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
    for bad, _ in damaged if is_primary_process() else []:  # Every process found it; one moves it.
      aside = workdir / CORRUPT_DIR / f"{bad}-{time.strftime('%Y%m%d-%H%M%S')}"
      aside.parent.mkdir(exist_ok=True)
      (mngr.directory / str(bad)).rename(aside)
      logging.warning("Moved the damaged checkpoint of step %d to %s; resuming from step %d.",
                      bad, aside, step)
    return step, state
  if damaged:
    raise UserError(f"no checkpoint in {mngr.directory} can be restored, and the run was left "
                    "untouched: " + "; ".join(_unreadable(mngr, s, e) for s, e in damaged))
  return None


def _path_str(path) -> str:
  """A leaf's path as "a/0/b", whatever containers Orbax restored it into."""
  keys = (str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
  return "/".join(k for k in keys if k != "value")


def _flat(tree) -> dict[str, Any]:
  return {_path_str(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def restore_step(mngr: ocp.CheckpointManager, step: int, target: tuple | None = None) -> Any:
  """One checkpoint, into `target`'s structure (a NamedTuple) or as saved; damaged: UserError."""
  try:
    if target is None:
      return mngr.restore(step, args=ocp.args.StandardRestore())
    return _restore_into(mngr, step, target)
  except Exception as e:  # pylint: disable=broad-except  # Orbax and TensorStore raise all sorts.
    raise UserError(f"cannot restore {_unreadable(mngr, step, e)}") from e


def with_source_fields(workdir: str, config: ml_collections.ConfigDict,
                       given: Collection[str]) -> ml_collections.ConfigDict:
  """`config` with the data and network of the run it continues, where not `given`.

  The run continued is the one in `workdir` when resuming (RESUME_FIELDS),
  else `init_from`'s (SOURCE_FIELDS). A field given on the command line is
  kept, and checked against the source later (`check_same_network`,
  `init_source`).
  """
  if (epath.Path(workdir) / CONFIG_FILE).is_file():
    source, fields = workdir, config_lib.RESUME_FIELDS
  elif config.init_from and (epath.Path(config.init_from) / CONFIG_FILE).is_file():
    source, fields = config.init_from, config_lib.SOURCE_FIELDS
  else:
    return config
  saved = load_config(source)
  taken = {f: saved[f] for f in fields if f not in given and saved[f] != config[f]}
  if taken:
    logging.info("From %s: %s.", epath.Path(source) / CONFIG_FILE,
                 ", ".join(f"{k}={v!r}" for k, v in taken.items()))
    config = config.copy_and_resolve_references()
    config.update(taken)
  return config


def init_source(init_from: str, config: ml_collections.ConfigDict
                ) -> tuple[ocp.CheckpointManager, int]:
  """The manager and `init_checkpoint` step of `init_from`, once it fits this network.

  Its gates are only needed when they are kept (`config_lib.gates_from_init`).
  """
  if not epath.Path(init_from).is_dir():
    raise UserError(f"init_from={init_from} does not exist (it should be a training workdir)")
  # The gates' presence matters only when they are taken.
  fields = tuple(f for f in config_lib.ARCHITECTURE_FIELDS
                 if f != "use_gate" or config_lib.gates_from_init(config))
  differences = architecture_differences(load_config(init_from), config, fields)
  if differences:
    raise UserError(f"init_from={init_from} is a different network: {'; '.join(differences)}")
  return chosen_step(init_from, config.init_checkpoint)


def load_weights(init_from: str, config: ml_collections.ConfigDict, params: nnx.State,
                 batch_stats: nnx.State) -> tuple[nnx.State, nnx.State]:
  """`params` and `batch_stats` with their arrays replaced by those of `init_from`'s checkpoint.

  Gates are left as initialised (at `droprate_init`), so that a trained
  baseline can be fine-tuned with gates, unless `train_gates=False` keeps
  those of a pruning run. Arrays must match in shape, one for one.
  """
  mngr, step = init_source(init_from, config)
  restored = restore_step(mngr, step)
  source = {**_flat(restored["params"]), **{f"bn:{k}": v for k, v in
                                            _flat(restored["batch_stats"]).items()}}

  def take(prefix, tree):
    gate_paths = gates.gate_paths(tree)

    def replace(path, leaf):
      key = prefix + _path_str(path)
      if path in gate_paths and not config_lib.gates_from_init(config):
        return leaf
      if key not in source or source[key].shape != leaf.shape:
        raise UserError(f"init_from={init_from} does not fit this network at {key}")
      return jax.numpy.asarray(source[key], leaf.dtype)
    return jax.tree_util.tree_map_with_path(replace, tree)

  return take("", params), take("bn:", batch_stats)
