"""Metric writers and progress reports, with a console fallback.

clu's writers and periodic actions import TensorFlow. Where it is missing
(the GPU machine has none) training goes on with console-only writers and says
so once, instead of failing.
"""

import time
from typing import Any, Mapping

import jax
from absl import logging


class ConsoleWriter:
  """The subset of clu's MetricWriter that training uses, printed through absl."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    logging.info("[%d] %s", step, ", ".join(f"{k}={float(v):.5g}" for k, v in scalars.items()))

  def write_histograms(self, step: int, arrays: Mapping[str, Any], num_buckets=None) -> None:
    del step, arrays, num_buckets  # A histogram does not read well on a console.

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    logging.info("hparams: %s", dict(hparams))

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class ConsoleProgress:
  """Steps/s and ETA on the console, every `every_secs` seconds."""

  def __init__(self, num_train_steps: int, every_secs: float = 60.0):
    self._total = num_train_steps
    self._every = every_secs
    self._last = None

  def __call__(self, step: int, t: float | None = None) -> None:
    t = time.monotonic() if t is None else t
    if self._last is None:
      self._last = (step, t)
      return
    last_step, last_t = self._last
    if t - last_t < self._every or step == last_step:
      return
    rate = (step - last_step) / (t - last_t)
    eta_min = (self._total - step) / rate / 60 if rate > 0 else float("inf")
    logging.info("step %d/%d: %.1f steps/s, ETA %.1f min", step, self._total, rate, eta_min)
    self._last = (step, t)


def _tensorboard_missing() -> str | None:
  try:
    from clu import metric_writers  # pylint: disable=unused-import,import-outside-toplevel
    from clu import periodic_actions  # pylint: disable=unused-import,import-outside-toplevel
  except ImportError as e:
    return str(e)
  return None


def create(workdir: str, num_train_steps: int):
  """Returns (writer, progress): clu's TensorBoard writer and ReportProgress, or console ones."""
  missing = _tensorboard_missing()
  if missing is not None:
    logging.warning("No TensorBoard event files for this run (%s); metrics go to the console. "
                    "Install tensorflow-cpu and tensorboard (requirements.txt) for TensorBoard.",
                    missing)
    return ConsoleWriter(), ConsoleProgress(num_train_steps)
  from clu import metric_writers, periodic_actions  # pylint: disable=import-outside-toplevel
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  progress = periodic_actions.ReportProgress(num_train_steps=num_train_steps, writer=writer,
                                             every_secs=60.0)
  return writer, progress

