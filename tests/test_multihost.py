"""Two processes on localhost (one CPU device each) as two hosts: `main.py --multihost`.

They train one tiny run together, are killed mid-run and resume, then test and
export it. The run must come out as one process with two devices trains it
(two hosts with one GPU each and one host with two GPUs split the batch the
same way), with one set of checkpoints and one history. Every process costs
seconds of imports and tracing, so the reference runs beside the first pair,
and the two modes after training run one pair each.
"""

import json
import os
import socket

import pytest

from conftest import MAIN, TWO_DEVICES, Program, tiny_flags
from l0jax import export, workdirs
from test_resume import history, resumed_from, step_dirs

TRAIN = ["--config=configs/gated.py", *tiny_flags()]  # 2 epochs of 14 steps


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def together(*args: str) -> list[Program]:
  """`main.py --multihost ARGS` as processes 0 and 1 of two, started at once."""
  flags = ["--multihost", f"--coordinator_address=localhost:{free_port()}", "--num_processes=2"]
  return [Program(MAIN, *args, *flags, f"--process_id={i}") for i in range(2)]


def finish(processes: list[Program]) -> list[str]:
  """Their stderr, once each ended well."""
  logs = []
  for process in processes:
    result = process.wait()
    assert result.returncode == 0, result.stderr[-3000:]
    logs.append(result.stderr)
  return logs


def test_two_processes_train_resume_test_and_export_as_one_with_two_devices(tmp_path):
  workdir, reference = str(tmp_path / "run"), str(tmp_path / "reference")
  one = Program(MAIN, *TRAIN, f"--workdir={reference}", env=TWO_DEVICES)
  first = together(*TRAIN, f"--workdir={workdir}")
  # Killed both, a few steps into the second epoch (after the first checkpoint). Process 0
  # waits for its peer in every step: if process 1 ended, it is stopped at once.
  first[0].kill_when(lambda: first[1].proc.poll() is not None or (
      first[0].step >= 14 + 3 and "14" in step_dirs(workdir)))
  assert first[1].proc.poll() is None, first[1].stderr[-3000:]
  first[1].proc.kill()
  first[1].wait()
  logs = finish(together(*TRAIN, f"--workdir={workdir}"))
  assert all(resumed_from(log) == 14 for log in logs), [l[-2000:] for l in logs]
  finish([one])
  assert step_dirs(workdir) == step_dirs(reference) == ["14", "28"]
  assert history(workdir) == history(reference)  # epochs 0 and 1, once each
  finish(together("--mode=test", f"--workdir={workdir}"))
  finish(together("--mode=export", f"--workdir={workdir}"))
  tested = json.load(open(os.path.join(workdir, workdirs.TEST_METRICS_FILE)))
  exported = json.load(open(os.path.join(workdir, workdirs.EXPORT_DIR, export.METRICS_FILE)))
  assert tested["checkpoint_step"] == exported["checkpoint_step"] == 28
  assert exported["test_accuracy_gated"] == pytest.approx(tested["test_accuracy"], abs=1e-6)
  assert not [n for n in os.listdir(workdir) if n.startswith(".")]  # no temporary folder
