"""Crashes and resumes through main.py: real SIGKILLs, damaged checkpoints, a loss that turns NaN.

A run killed at any point and started again with the same command must finish
bitwise identical (on CPU) to one never interrupted. The uninterrupted
reference and the NaN run start once per module, in the background, while the
killed runs go on beside them: every process here costs seconds of imports
and tracing, and they overlap well on two cores.
"""

import json
import os
import re
import shutil
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from conftest import MAIN, TWO_DEVICES, Program, run_main, tiny_flags
from l0jax import checkpoints, workdirs
from l0jax.errors import UserError
from test_errors import tree_listing

NUM_EPOCHS = 3  # 14 steps each: checkpoints at steps 14, 28 and 42.
# One step per compiled call, as on CPU by default: the quickest to trace and to run here.
TRAIN = ["--config=configs/gated.py", *tiny_flags(num_epochs=NUM_EPOCHS)]
# The learning rate jumps to 1e30 after the first epoch: the loss is NaN two steps later.
NAN = ["--config=configs/gated.py", *tiny_flags(lr_factor=1e33)]


def checkpoint_names(workdir: str) -> list[str]:
  folder = os.path.join(workdir, workdirs.CHECKPOINTS_DIR)
  return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def step_dirs(workdir: str) -> list[str]:
  """The finished steps and any half-written ones (Orbax's `<step>.orbax-checkpoint-tmp...`)."""
  return [n for n in checkpoint_names(workdir) if n[0].isdigit()]


def resumed_from(log: str) -> int | None:
  match = re.search(r"Resuming .* from step (\d+)\.", log)
  return int(match.group(1)) if match else None


def saved_arrays(workdir: str) -> dict[int, dict[str, np.ndarray]]:
  """Every kept checkpoint's arrays (parameters, gates, BN statistics, optimizer state) by path."""
  mngr = checkpoints.manager(workdir, read_only=True)
  return {step: {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
                 jax.tree_util.tree_flatten_with_path(
                     mngr.restore(step, args=ocp.args.StandardRestore()))[0]}
          for step in mngr.all_steps()}


def history(workdir: str) -> list[dict]:
  """history.jsonl without the wall-clock time, the one field a resumed run may change."""
  with open(os.path.join(workdir, "history.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_seconds"} for line in f]


def assert_same_run(workdir: str, reference: str):
  """Bitwise the same kept checkpoints and the same history as the reference run."""
  ours, theirs = saved_arrays(workdir), saved_arrays(reference)
  assert sorted(ours) == sorted(theirs) and max(ours) == 14 * NUM_EPOCHS
  for step in theirs:
    assert ours[step].keys() == theirs[step].keys()
    for name, array in theirs[step].items():
      np.testing.assert_array_equal(ours[step][name], array, err_msg=f"step {step}: {name}")
  assert history(workdir) == history(reference)
  assert not [n for n in checkpoint_names(workdir) if not n.isdigit()]  # no half-written steps


@pytest.fixture(scope="module")
def background(tmp_path_factory):
  """The uninterrupted reference run and the NaN run (on two devices), started at once."""
  root = tmp_path_factory.mktemp("background")
  reference, nan = str(root / "reference"), str(root / "nan")
  runs = {"reference": (reference, Program(MAIN, *TRAIN, f"--workdir={reference}")),
          "nan": (nan, Program(MAIN, *NAN, f"--workdir={nan}", env=TWO_DEVICES))}
  yield runs
  for _, main in runs.values():
    main.proc.kill()  # In case a failed test left it running.


def finished(background, name: str) -> tuple[str, int, str]:
  """The workdir, exit status and stderr of a background run, once it ended."""
  workdir, main = background[name]
  result = main.wait()
  return workdir, result.returncode, result.stderr


def reference_run(background) -> str:
  workdir, returncode, log = finished(background, "reference")
  assert returncode == 0, log[-3000:]
  return workdir


def test_killed_while_saving_then_resumed_is_bitwise_the_same(background, tmp_path):
  """The same command twice, killed while it saves its second checkpoint: parameters, gates, BN
  statistics, optimizer state and every epoch's metrics come out as in the reference, to the
  bit. The cut save is set aside, never resumed from; the one before it is."""
  workdir = str(tmp_path / "run")
  args = [*TRAIN, f"--workdir={workdir}"]
  Program(MAIN, *args).kill_when(lambda: any(n.startswith("28") for n in step_dirs(workdir)))
  cut = "28" not in step_dirs(workdir)
  result = Program(MAIN, *args).wait()
  assert result.returncode == 0, result.stderr[-3000:]
  assert resumed_from(result.stderr) == (14 if cut else 28)
  assert_same_run(workdir, reference_run(background))


def test_sigterm_while_saving_completes_the_save_and_the_run_resumes_from_it(background, tmp_path):
  """SIGTERM (a preemption) while the second checkpoint is being written: the run finishes writing
  it, says so in one line and exits as SIGTERM would; the same command resumes from that very
  checkpoint and ends bitwise as the reference."""
  workdir = str(tmp_path / "run")
  args = [*TRAIN, f"--workdir={workdir}"]
  stopped = Program(MAIN, *args)
  stopped.signal_when(lambda: any(n.startswith("28") for n in step_dirs(workdir)), signal.SIGTERM)
  result = stopped.wait()
  assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert re.fullmatch(r"stopped: signal 15 stopped the run at step \d+; it resumes from its newest "
                      r"checkpoint, step 28, when the same command is run again", last), last
  assert step_dirs(workdir) == ["14", "28"]  # complete, nothing half-written
  resumed = Program(MAIN, *args).wait()
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert resumed_from(resumed.stderr) == 28
  assert_same_run(workdir, reference_run(background))


def test_a_loss_that_turns_nan_stops_the_run_naming_the_step(background):
  workdir, returncode, log = finished(background, "nan")
  assert returncode == 2 and "Traceback" not in log, log[-3000:]
  last = log.strip().splitlines()[-1]
  assert re.fullmatch(r"error: the loss became (nan|-?inf) at step 16 \(epoch 2\); training "
                      r"stopped, keeping the checkpoints in .* \(newest: step 14\)", last), last
  assert step_dirs(workdir) == ["14"] and len(history(workdir)) == 1


def damage(workdir: str, step: int) -> str:
  """Truncates a checkpoint's largest file, as a copy cut short would; returns the step's folder."""
  folder = os.path.join(workdir, workdirs.CHECKPOINTS_DIR, str(step))
  files = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
  largest = max(files, key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 2)
  return folder


def test_a_damaged_newest_checkpoint_is_set_aside_for_the_one_before(background, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference_run(background), workdir)
  newest = damage(workdir, 14 * NUM_EPOCHS)
  result = run_main(*TRAIN, f"--workdir={workdir}")
  returncode, log = result.returncode, result.stderr
  assert returncode == 0, log[-3000:]
  assert f"Cannot restore the checkpoint {newest} (" in log
  assert resumed_from(log) == 14 * (NUM_EPOCHS - 1)
  assert [n.split("-")[0] for n in os.listdir(os.path.join(workdir, workdirs.CORRUPT_DIR))] == [
      str(14 * NUM_EPOCHS)]
  assert_same_run(workdir, reference_run(background))


def test_only_damaged_checkpoints_is_an_error_naming_them(background, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference_run(background), workdir)
  damaged = [damage(workdir, int(step)) for step in step_dirs(workdir)]
  before = tree_listing(workdir)
  result = run_main(*TRAIN, f"--workdir={workdir}")
  returncode, log = result.returncode, result.stderr
  assert returncode == 2 and "Traceback" not in log, log[-3000:]
  last = log.strip().splitlines()[-1]
  assert last.startswith("error: no checkpoint in ") and "left untouched" in last, last
  assert all(folder in last for folder in damaged), last
  assert tree_listing(workdir) == before


def test_a_damaged_history_line_is_reported_and_the_rest_kept(background, tmp_path):
  """Only the epochs after the newest checkpoint are written again; a damaged line before it is
  named, with the epoch it leaves without a record, and the file as it was is kept."""
  workdir = tmp_path / "run"
  shutil.copytree(reference_run(background), workdir)
  path = workdir / "history.jsonl"
  lines = path.read_text().splitlines(keepends=True)
  lines[1] = lines[1][:40] + "\n"  # epoch 2's line cut, the lines around it intact
  path.write_text("".join(lines))
  result = run_main(*TRAIN, f"--workdir={workdir}")
  returncode, log = result.returncode, result.stderr
  assert returncode == 0, log[-3000:]
  copies = [n for n in os.listdir(workdir) if n.startswith("history.jsonl.damaged-")]
  assert len(copies) == 1 and (workdir / copies[0]).read_text() == "".join(lines)
  assert re.search(rf"{path}: line\(s\) 2 are damaged; no record is left of epoch\(s\) 2; the "
                   rf"file as it was is kept in {workdir / copies[0]}", log), log[-3000:]
  full = history(reference_run(background))
  assert history(str(workdir)) == [full[0], full[2]]


def test_history_lines_cut_short_or_damaged(tmp_path):
  records = [json.dumps({"epoch": e, "step": 14 * (e + 1)}) for e in range(3)]
  path = tmp_path / "history.jsonl"
  path.write_text(records[0] + "\n{\"epo\n" + records[2] + "\n" + records[2][:10])
  kept, damaged = workdirs.read_history(epath.Path(tmp_path))
  assert kept == [(0, records[0]), (2, records[2])] and damaged == [2]  # the cut last line is not


def test_a_first_epoch_without_its_checkpoint_is_trained_again_but_more_is_refused(tmp_path):
  # A kill during the first save leaves epoch 0's record alone; more means checkpoints went.
  path = tmp_path / "history.jsonl"
  path.write_text(json.dumps({"epoch": 0, "step": 14}) + "\n")
  checkpoints.check_history_has_checkpoints(str(tmp_path))
  path.write_text(path.read_text() + json.dumps({"epoch": 1, "step": 28}) + "\n")
  with pytest.raises(UserError, match="records 2 epochs but .* has no checkpoint"):
    checkpoints.check_history_has_checkpoints(str(tmp_path))
