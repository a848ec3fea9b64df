"""What a sweep has done and what it has left, from its members' files alone: `--status`.

It reads each member's config and history.jsonl and whether it was tested,
never a test number, so a protocol can look at a sweep in progress without
seeing a result. It takes no lock: it runs beside the sweep it describes.
"""

import dataclasses
import json
import pathlib
import statistics
from typing import Sequence

from l0jax import cli, locking, workdirs
from l0jax.sweep import reporting
from l0jax.sweep.planning import Member

# Stopped: begun, and nothing trains it now (a stopped sweep, or a failed run).
FINISHED, RUNNING, STOPPED, NOT_STARTED = "finished", "running", "stopped", "not started"
STATES = (FINISHED, RUNNING, STOPPED, NOT_STARTED)


@dataclasses.dataclass(frozen=True)
class Progress:
  """One member's state, and the seconds each of its trained epochs took."""

  member: Member
  state: str
  epochs: int
  epoch_seconds: tuple[float, ...]

  @property
  def epochs_left(self) -> int:
    return 0 if self.state == FINISHED else max(self.epochs - len(self.epoch_seconds), 0)


def progress(member: Member, sweep_dir: pathlib.Path) -> Progress:
  workdir = sweep_dir / member.name
  epochs = cli.command_config(member.commands(sweep_dir)[0][1:]).num_epochs
  seconds = tuple(json.loads(line).get("epoch_seconds", 0.0)
                  for _, line in workdirs.read_history(workdir)[0])
  if reporting.is_finished(workdir):
    state = FINISHED
  elif locking.holder(str(workdir)):  # its main.py holds the workdir's lock
    state = RUNNING
  else:
    state = STOPPED if seconds or (workdir / workdirs.SWEEP_LOG_FILE).exists() else NOT_STARTED
  return Progress(member, state, epochs, seconds)


def seconds_left(runs: Sequence[Progress]) -> float | None:
  """The unfinished members' epochs left, each at the median epoch time of its kind's trained
  epochs in this sweep (of every kind where its own has none); None if nothing was trained."""
  by_kind: dict[str, list[float]] = {}
  for p in runs:
    by_kind.setdefault(p.member.kind, []).extend(p.epoch_seconds)
  every = [s for seconds in by_kind.values() for s in seconds]
  if not every:
    return None
  return sum(p.epochs_left * statistics.median(by_kind.get(p.member.kind) or every)
             for p in runs)


def report(sweep_dir: pathlib.Path, members: Sequence[Member]) -> str:
  """A line per member (its state, epochs and training time), then what is left."""
  runs = [progress(m, sweep_dir) for m in members]
  counts = {s: sum(p.state == s for p in runs) for s in STATES}
  width = max(len(m.name) for m in members)
  lines = [f"{sweep_dir}: {counts[FINISHED]} of {len(runs)} runs finished, "
           f"{counts[RUNNING]} running, {counts[STOPPED]} stopped, "
           f"{counts[NOT_STARTED]} not started"]
  for p in runs:
    trained = f"{len(p.epoch_seconds)} of {p.epochs} epochs"
    time = (f", {reporting.hours_or_minutes(sum(p.epoch_seconds))} of training"
            if p.epoch_seconds else "")
    lines.append(f"  {p.state:<11}  {p.member.name:<{width}}  {trained}{time}")
  epochs_left = sum(p.epochs_left for p in runs)
  left = seconds_left(runs)
  estimate = ("" if left is None else f", about {reporting.hours_or_minutes(left)} at the median "
              "epoch time of each kind of run in this sweep so far (rough: epochs take longer "
              "beside other work, and those of smaller networks less)")
  done = [s for p in runs for s in p.epoch_seconds]
  lines.append(f"Trained: {len(done)} epochs in {reporting.hours_or_minutes(sum(done))}. "
               f"Left: {epochs_left} epochs{estimate}.")
  return "\n".join(lines) + "\n"
