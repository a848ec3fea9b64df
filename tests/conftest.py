"""Shared test settings: tiny runs, programs in fresh processes, and one JAX compilation cache.

The suite starts `main.py` many times with the same tiny networks; a
persistent compilation cache lets each later process skip XLA's compile. It
lives in a new folder for each session, removed at its end, so that no run of
the suite reads what an earlier one compiled.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="l0jax-tests-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
# Every compile is kept: most of the tiny networks' programs compile in less than JAX's
# default threshold of a second.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's backend (LLVM) at optimisation level 1, not 3, for every program the suite compiles,
# here and in the processes it starts: it compiles faster (results/test_suite/), and where it was
# compared with level 3 it gave the same bits (the initialisation, which run_once compiles at
# level 1; test_train checks it) or the same printed losses (a VGG-11).
# Level 0 would save more, but trains the tiny VGG-11 into a nan at its second step.
_BACKEND_LEVEL_1 = "--xla_backend_optimization_level=1"
if _BACKEND_LEVEL_1 not in os.environ.get("XLA_FLAGS", ""):  # xdist's workers inherit it
  os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"),
                                                   _BACKEND_LEVEL_1]))

from l0jax import run_config  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO, "main.py")

# Two CPU devices in one process, standing in for two GPUs.
TWO_DEVICES = {"XLA_FLAGS": os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=2"}

# What a machine without TensorFlow lacks. A None in sys.modules makes importing
# it fail and importlib's find_spec answer None, as when it is not installed.
TENSORFLOW = ("tensorflow", "tensorflow_datasets", "tensorboard")


def pytest_sessionfinish(session, exitstatus):  # pylint: disable=unused-argument
  if "_CACHE" in globals():
    shutil.rmtree(_CACHE, ignore_errors=True)


# The network of the tests that exercise the program rather than a network. Every process the
# suite starts traces its steps again, and a ResNet-8's trace in a fifth of the GoogleNet's time;
# the tests of the GoogleNet itself ask for it (GOOGLENET).
TEST_NETWORK = {"model": "resnet", "depth": 8}
GOOGLENET = {"model": "googlenet", "depth": 0}


def tiny_config(**overrides):
  """The base config at the size of `runlocal` (the smallest run that still exercises
  everything) with TEST_NETWORK, and `overrides`."""
  c = run_config.variant(run_config.base_config(), "runlocal")
  c.update({**TEST_NETWORK, **overrides})
  return c


def tiny_flags(**overrides) -> list[str]:
  """`runlocal`'s values, TEST_NETWORK and `overrides` as main.py's --config.KEY=VALUE flags, for
  any recipe (and the sweep, which hands them on)."""
  def value(v):
    return f"({','.join(map(str, v))},)" if isinstance(v, tuple) else str(v)
  return [f"--config.{k}={value(v)}"
          for k, v in {**run_config.RUNLOCAL, **TEST_NETWORK, **overrides}.items()]


def hiding(modules: tuple[str, ...], folder) -> dict[str, str]:
  """Environment variables for a Python process that finds none of `modules`: a sitecustomize
  module, written to `folder`, puts them in its sys.modules as None when it starts."""
  (folder / "sitecustomize.py").write_text(
      f"import sys\nsys.modules.update(dict.fromkeys({modules!r}))\n")
  return {"PYTHONPATH": str(folder)}


@pytest.fixture(scope="session")
def without_tensorflow(tmp_path_factory) -> dict[str, str]:
  """Environment variables for a Python process that finds no TensorFlow."""
  return hiding(TENSORFLOW, tmp_path_factory.mktemp("without_tensorflow"))


@pytest.fixture
def tensorflow_hidden(monkeypatch) -> None:
  """This process finds no TensorFlow for one test, as `without_tensorflow`'s processes."""
  for name in TENSORFLOW:
    monkeypatch.setitem(sys.modules, name, None)


class CreatesAFile:
  """Unpickled by `pickle.loads`, it creates `path`: a stand-in for any code a pickle can run."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return open, (self.path, "w")


STEP_LOGGED = re.compile(r"step (\d+)/\d+: train loss")  # main.py's line after each logged window


class Program:
  """`python ARGS` started in the background in the repository root, as a user would run it
  (main.py is `Program(MAIN, ...)`), with `env` added to its environment (None: unset).

  Its stdout and stderr are collected as text while it runs, and the last
  training step it logged is `step`.
  """

  def __init__(self, *args: str, env: dict[str, str] | None = None):
    self.args = [sys.executable, *args]
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    self.proc = subprocess.Popen(self.args, cwd=REPO, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    self.step = 0
    self._out, self._err = [], []
    self._readers = [threading.Thread(target=self._read, args=stream, daemon=True)
                     for stream in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))]
    for reader in self._readers:
      reader.start()

  def _read(self, stream, lines: list[str]):
    for line in stream:
      lines.append(line)
      match = STEP_LOGGED.search(line)
      if match:
        self.step = int(match.group(1))

  @property
  def stderr(self) -> str:
    """What it wrote to stderr so far."""
    return "".join(self._err)

  def wait(self, timeout: float = 600) -> subprocess.CompletedProcess:
    """Its exit status and output, once it ended (killed after `timeout` seconds)."""
    try:
      self.proc.wait(timeout)
    finally:
      self.proc.kill()  # Nothing, if it ended.
    for reader in self._readers:
      reader.join()
    return subprocess.CompletedProcess(self.args, self.proc.returncode, "".join(self._out),
                                       self.stderr)

  def signal_when(self, condition, signum: int, timeout: float = 600) -> None:
    """Sends it `signum` the moment `condition()` holds (polled every 2 ms)."""
    deadline = time.monotonic() + timeout
    while not condition() and self.proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.002)
    self.proc.send_signal(signum)

  def kill_when(self, condition, timeout: float = 600) -> subprocess.CompletedProcess:
    """SIGKILLs it the moment `condition()` holds; its output. Fails if it ended before."""
    self.signal_when(condition, signal.SIGKILL, timeout)
    result = self.wait()
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    return result


def run_main(*args: str, env: dict[str, str] | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess:
  """main.py ARGS in a fresh process, to its end."""
  return Program(MAIN, *args, env=env).wait(timeout)


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
