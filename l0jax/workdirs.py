"""A workdir, the folder one run lives in: its layout, and the reading and writing of its files.

  config.json           the run's resolved config (`save_config`, `load_config`)
  checkpoints/STEP/     Orbax checkpoints: the newest `keep_checkpoints`, and the best by
                        validation accuracy (l0jax/checkpoints.py)
  corrupt_checkpoints/  damaged steps, set aside when an older one is resumed
  history.jsonl         one JSON record per epoch, with every gate's log_alpha
                        (`append_history`, `load_history`, `keep_history_before`)
  events.*              TensorBoard's event files (`writers.MetricWriter`)
  test_metrics.json     what --mode=test measured (`write_test_metrics`, `read_test_metrics`)
  export/               the compact network of --mode=export (`export.save` fills it)
  analysis/             the figures and summary of --mode=analyze
  sweep.log             a sweep member's training console output
  sweep_test.log        its --mode=test console output, apart: sweep.log shows no test number
  lock                  held while the run trains (`training_lock`)

Files are written whole or not at all: a reader sees the old file or the new
one, and a history line is appended whole. With several processes
(`--multihost`) every one computes the same values and the primary one writes
the files. Checkpoints are checkpoints.py's, and what a run starts from
warm_start.py's; this module loads neither Orbax nor the network.
"""

import contextlib
import json
import os
import time
from typing import Any, Collection

import jax
import ml_collections
from absl import logging
from etils import epath

from l0jax import locking, run_config, versions
from l0jax.errors import UserError, one_line

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
# Where damaged steps are moved when an older good one is resumed instead.
CORRUPT_DIR = "corrupt_checkpoints"
HISTORY_FILE = "history.jsonl"
TEST_METRICS_FILE = "test_metrics.json"
EXPORT_DIR = "export"
ANALYSIS_DIR = "analysis"
SWEEP_LOG_FILE = "sweep.log"
SWEEP_TEST_LOG_FILE = "sweep_test.log"


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
    raise UserError(f"{path} is damaged ({one_line(e)}); {fix}") from e
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
  """The run's saved config; fields added since it was saved read as they were then
  (`versions.saved_config`) or as their defaults."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise UserError(f"{workdir} holds no training run (no {CONFIG_FILE}); train into it first")
  fix = ("it was left as it is; to go on with this run, delete it and train again with the "
         "run's --config (it is written anew and training resumes from the checkpoints)")
  saved = read_json(path, dict, fix)
  config = run_config.base_config()
  try:
    config.update(versions.saved_config(saved))
  except (ValueError, TypeError, KeyError, AttributeError) as e:  # A field of a wrong type, or none.
    raise UserError(f"{path} is damaged ({one_line(e)}); {fix}") from e
  return config


def training_lock(workdir: str) -> contextlib.AbstractContextManager:
  """Training's hold on `workdir` (its `lock` file), taken by process 0 alone: a run's processes
  share it. A second training process is refused in one line naming the holder."""
  if not is_primary_process():
    return contextlib.nullcontext()
  return locking.exclusive_folder(workdir, "--workdir")


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


def with_source_fields(workdir: str, config: ml_collections.ConfigDict,
                       given: Collection[str]) -> ml_collections.ConfigDict:
  """`config` with the data and network of the runs it continues, where not `given`.

  The run continued is the one in `workdir` when resuming (RESUME_FIELDS),
  else `init_from`'s (SOURCE_FIELDS, and its GATE_LAYOUT where this run keeps
  its gates), and for a mask made from a run's gates `mask_from`'s GATE_LAYOUT.
  A field given on the command line is kept, and checked against the source
  later (`warm_start.check_same_network`, `warm_start.init_source`,
  `masks.kept_by`).
  """
  if (epath.Path(workdir) / CONFIG_FILE).is_file():
    sources = [(workdir, run_config.RESUME_FIELDS)]
  else:
    keeps_gates = run_config.gate_plan(config).gates == run_config.RETRAIN
    sources = [(config.init_from, run_config.SOURCE_FIELDS
                + (run_config.GATE_LAYOUT if keeps_gates else ())),
               (config.mask_from if config.mask in run_config.MASKS_FROM_RUN else "",
                run_config.GATE_LAYOUT)]
  for source, fields in sources:
    if not (source and (epath.Path(source) / CONFIG_FILE).is_file()):
      continue
    saved = load_config(source)
    taken = {f: saved[f] for f in fields if f not in given and saved[f] != config[f]}
    if taken:
      logging.info("From %s: %s.", epath.Path(source) / CONFIG_FILE,
                   ", ".join(f"{k}={v!r}" for k, v in taken.items()))
      config = config.copy_and_resolve_references()
      config.update(taken)
  return config
