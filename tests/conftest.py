"""Shared test settings: tiny runs, and one JAX compilation cache for every process.

The suite starts `main.py` many times with the same tiny networks; a
persistent compilation cache lets each later process skip XLA's compile.
"""

import os
import subprocess
import sys
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "l0jax-tests-jax-cache"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from l0jax import config as config_lib  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The smallest run that still exercises everything: 8x8 synthetic images, a
# quarter-width network, 14 steps an epoch.
TINY = {
    "dataset": "synthetic",
    "synthetic_image_size": 8,
    "synthetic_num_train": 512,
    "width_multiplier": 0.25,
    "batch_size": 32,
    "eval_batch_size": 64,
    "steps_per_call": 1,  # The CPU default: no loop inside the compiled step.
    "log_every_steps": 1,  # A console line after every step: tests follow a run's progress.
    "num_epochs": 2,
    "lr_milestones": (1,),
}


# Two CPU devices in one process, standing in for two GPUs.
TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def tiny_config(**overrides):
  """The base config with TINY and `overrides` applied."""
  c = config_lib.base_config()
  c.update({**TINY, **overrides})
  return c


def tiny_flags(**overrides) -> list[str]:
  """TINY and `overrides` as main.py's --config.KEY=VALUE flags."""
  def value(v):
    return f"({','.join(map(str, v))},)" if isinstance(v, tuple) else str(v)
  return [f"--config.{k}={value(v)}" for k, v in {**TINY, **overrides}.items()]


class CreatesAFile:
  """Unpickled by `pickle.loads`, it creates `path`: a stand-in for any code a pickle can run."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return open, (self.path, "w")


def run_main(*args: str, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
  """main.py in a fresh process, as a user would run it (output captured as text), with `env`
  added to its environment."""
  return subprocess.run([sys.executable, os.path.join(REPO, "main.py"), *args], cwd=REPO,
                        env={**os.environ, **(env or {})}, capture_output=True, text=True,
                        timeout=timeout, check=False)


def read_events(logdir: str) -> list:
  """Every Event in the TensorBoard event files of `logdir` (TFRecord framing, CRCs unchecked)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  events = []
  for name in sorted(os.listdir(logdir)):
    if name.startswith("events.out.tfevents."):
      with open(os.path.join(logdir, name), "rb") as f:
        blob = f.read()
      offset = 0
      while offset < len(blob):  # [length u64][crc u32][data][crc u32]
        length = int.from_bytes(blob[offset:offset + 8], "little")
        events.append(event_pb2.Event.FromString(blob[offset + 12:offset + 12 + length]))
        offset += 16 + length
  return events
