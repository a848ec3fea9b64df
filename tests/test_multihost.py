"""Two processes on localhost (one CPU device each) as two hosts: `main.py --multihost`.

They train one tiny run together, one is killed mid-run and the other stops in
one line, and both resume, then test and export it. The run must come out as
one process with two devices trains it (two hosts with one GPU each and one
host with two GPUs split the batch the same way), with one set of checkpoints
and one history. Every process costs seconds of imports and tracing, so the
reference runs beside the first pair, and the two modes after training run one
pair each. A killed coordinator, and a peer that never starts, end the others
in one line too.
"""

import json
import logging
import os
import re
import socket
import subprocess
import sys

import pytest

from conftest import MAIN, TWO_DEVICES, Program, tiny_flags
from l0jax import export, hosts, workdirs
from test_errors import library_record
from test_resume import history, resumed_from, step_dirs

TRAIN = ["--config=configs/gated.py", *tiny_flags()]  # 2 epochs of 14 steps
# What JAX's abort prints, and a traceback: none of it may reach the console without --debug.
NATIVE = re.compile(r"^([FEW]\d{4} |Traceback|Fatal Python error|\*\*\* Check failure)", re.M)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def together(*args: str, processes: tuple[int, ...] = (0, 1)) -> list[Program]:
  """`main.py --multihost ARGS` as `processes` of two, started at once."""
  flags = ["--multihost", f"--coordinator_address=localhost:{free_port()}", "--num_processes=2"]
  return [Program(MAIN, *args, *flags, f"--process_id={i}") for i in processes]


def check_stopped_in_one_line(result: subprocess.CompletedProcess, status: int,
                              *fragments: str) -> None:
  """Ended with `status` and one last `error:` line holding `fragments`, nothing native above."""
  assert result.returncode == status, (result.returncode, result.stderr[-3000:])
  assert not NATIVE.search(result.stderr), result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in last, last


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
  # Process 1 killed a few steps into the second epoch (after the first checkpoint): process 0
  # stops in one line. At once if it waits at a collective; if process 1 got further before the
  # kill and process 0 waits at a checkpoint's barrier, after JAX's heartbeat timeout (100 s).
  first[1].kill_when(lambda: first[0].proc.poll() is not None or (
      first[1].step >= 14 + 3 and "14" in step_dirs(workdir)))
  check_stopped_in_one_line(first[0].wait(timeout=150), hosts.PEER_GONE,
                            "process 0 of the run: process 1 is gone",
                            "resumes from its newest complete checkpoint, step 14")
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


def test_in_a_child_a_library_error_goes_to_the_native_log(capfd):
  """Orbax logs one from a background thread when a peer leaves while a checkpoint is being
  finalized; on the console it would stand above the supervisor's one line."""
  console = logging.StreamHandler(sys.stdout)
  routed = hosts.LibraryErrorsToNativeLog(console)
  assert not routed.filter(library_record("/py/orbax/checkpoint/x.py", "Finalize failed"))
  assert routed.filter(library_record("/py/orbax/checkpoint/x.py", "Slow", logging.WARNING))
  assert routed.filter(library_record(os.path.join(os.path.dirname(hosts.__file__), "train.py"),
                                      "the loss became nan"))
  assert capfd.readouterr() == ("", "Finalize failed\n")


def test_a_killed_coordinator_or_a_peer_that_never_starts_ends_the_others_in_one_line(tmp_path):
  """Process 0 hosts JAX's coordination service: when it dies, JAX aborts the others at once."""
  workdir = str(tmp_path / "run")
  pair = together(*TRAIN, f"--workdir={workdir}")
  alone = together(*TRAIN, f"--workdir={tmp_path / 'alone'}", "--peer_timeout=5", processes=(0,))
  pair[0].kill_when(lambda: pair[1].proc.poll() is not None or pair[1].step >= 3)
  # Whether the native log names the coordination service first or a failed collective depends
  # on which of the two fails first: "process 0, which coordinates the run, is gone" or not.
  check_stopped_in_one_line(pair[1].wait(timeout=90), hosts.PEER_GONE,
                            "process 1 of the run: process 0", "is gone",
                            "resumes from the start (no checkpoint was complete),")
  check_stopped_in_one_line(alone[0].wait(timeout=90), hosts.NEVER_JOINED,
                            "process 0 of the run: not every process joined in time")
  assert not os.path.exists(tmp_path / "alone")
