"""Running a sweep's members: each member's main.py processes in turn, the training's console
output to its sweep.log and the test's to its sweep_test.log, the sweep's signals passed on to
the one running.
"""

import dataclasses
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

from absl import logging

from l0jax import cli, run_config, workdirs
from l0jax.errors import UserError
from l0jax.sweep.planning import Member
from l0jax.sweep.reporting import is_finished


def check(member: Member, sweep_dir: pathlib.Path) -> None:
  """Refuses a member whose config main.py would refuse, before the sweep writes anything."""
  try:
    cli.command_config(member.commands(sweep_dir)[0][1:])
  except UserError as e:
    raise UserError(f"{member.name}: {e}") from e


def realised_cost(member: Member, sweep_dir: pathlib.Path) -> Member:
  """A mask member with its budget set to what its `cost_of` member's test measured."""
  if not member.cost_of:
    return member
  metrics = workdirs.read_test_metrics(sweep_dir / member.cost_of)
  cost = member.target[0]
  targets = {f"target_{kind}": repr(metrics[f"{cost}_kept_fraction"] if kind == cost else 0.0)
             for kind in run_config.TARGET_KINDS}
  return dataclasses.replace(member, settings={**member.settings, **targets})


# A line that says what went wrong: main.py's one-line refusal, or a traceback's exception line.
_ERROR_LINE = re.compile(r"(error: |[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b:?)")


def _failure_line(output: str) -> str:
  """What a failed member said went wrong: its last error line (not the notes JAX prints after a
  traceback), or else its last line."""
  lines = [l.strip() for l in output.splitlines() if l.strip()]
  return next((l for l in reversed(lines) if _ERROR_LINE.match(l)), lines[-1] if lines else "")


def _run_forwarding_signals(command: list[str], log) -> int:
  """Runs `command` to its end, passing it the sweep's SIGTERM or SIGINT, and its exit status.

  The member runs in its own session (a Ctrl-C in the terminal reaches it
  once, through the sweep), and dies with the sweep; a signal it is passed
  lets it stop as it would alone, and the sweep then exits too.
  """
  received, children, pending = [], [], []

  def forward(signum, frame):  # pylint: disable=unused-argument
    received.append(signum)
    if children:
      children[0].send_signal(signum)
    else:  # It is starting: passed on once it has started.
      pending.append(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    children.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=cli.die_with_parent))
    while pending:
      children[0].send_signal(pending.pop(0))
    status = children[0].wait()
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  if received:
    logging.error("Stopped by signal %d, after the running member (%s) stopped.", received[0],
                  shlex.join(command))
    sys.exit(128 + received[0])
  return status


def run_member(member: Member, sweep_dir: pathlib.Path) -> bool:
  """Trains and tests one member unless it is finished; False if it did not finish."""
  workdir = sweep_dir / member.name
  if is_finished(workdir):
    logging.info("%s: finished before, skipped", member.name)
    return True
  if member.after and not is_finished(sweep_dir / member.after):
    logging.error("%s: not run, because %s, which it starts from, did not finish", member.name,
                  member.after)
    return False
  member = realised_cost(member, sweep_dir)
  workdir.mkdir(parents=True, exist_ok=True)
  # Apart, so that reading how a run trained shows no test number (a protocol reads none
  # before its end).
  for what, command, log_name in zip(("training", "testing"), member.commands(sweep_dir),
                                     (workdirs.SWEEP_LOG_FILE, workdirs.SWEEP_TEST_LOG_FILE)):
    log_path = workdir / log_name
    logging.info("%s: %s (output in %s)", member.name, what, log_path)
    start = time.monotonic()
    with log_path.open("a") as log:
      log.write(f"$ {shlex.join(command)}\n")
      log.flush()
      offset = log.tell()
      status = _run_forwarding_signals(command, log)
    if status:
      output = log_path.read_bytes()[offset:].decode(errors="replace")
      logging.error("%s: %s failed with exit status %d after %.0f s: %s", member.name, what,
                    status, time.monotonic() - start, _failure_line(output))
      return False
    logging.info("%s: %s took %.0f s", member.name, what, time.monotonic() - start)
  return True
