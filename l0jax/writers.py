"""Where training reports go: TensorBoard event files, and progress lines on the console.

The event files are written with tensorboardX, which needs no TensorFlow (clu's
metric writers, the usual ones in JAX examples, import TensorFlow's on import):
scalars, one histogram of `log_alpha` per gated layer, and the run's
hyperparameters (TensorBoard's HPARAMS tab). The console's lines are
`Progress`'s and the training loop's.
"""

import os
import time
from typing import Any, Mapping

import numpy as np
from absl import logging
from tensorboardX import summary as summaries
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2

# What shows the event files, which the core install does not bring: TensorBoard, which needs no
# TensorFlow either; its newest release, whose wheel pip downloads for Python 3.11 and 3.12.
TENSORBOARD_INSTALL = "pip install tensorboard==2.21.0"
# The metrics TensorBoard's HPARAMS tab lists beside each run's hyperparameters.
HPARAM_METRICS = ("val/accuracy", "val/loss", "train/open_gates", "train/expected_macs_kept")


class MetricWriter:
  """TensorBoard event files in `logdir`; nothing is written where `enabled` is False.

  Events are written by the calling thread, not tensorboardX's background one,
  so that a write the disk refuses raises its OSError here (main.py reports
  it in one line) instead of killing that thread and blocking training.
  """

  def __init__(self, logdir: str, enabled: bool = True):
    self._events = None
    if enabled:
      os.makedirs(logdir, exist_ok=True)
      self._events = EventsWriter(os.path.join(logdir, "events"))

  def _write(self, step: int, summaries: list) -> None:
    if self._events:
      for summary in summaries:
        self._events.write_event(event_pb2.Event(wall_time=time.time(), step=step,
                                                 summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    self._write(step, [summaries.scalar(tag, float(v)) for tag, v in scalars.items()])

  def write_histograms(self, step: int, arrays: Mapping[str, np.ndarray]) -> None:
    self._write(step, [summaries.histogram(tag, np.asarray(values), bins="auto")
                       for tag, values in arrays.items()])

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """`hparams` (bool, int, float or str values) for the HPARAMS tab."""
    self._write(0, list(summaries.hparams(dict(hparams), {name: 0.0 for name in HPARAM_METRICS})))

  def flush(self) -> None:
    if self._events:
      self._events.flush()

  def close(self) -> None:
    if self._events:
      self._events.close()


class Progress:
  """Speed and time left on the console, every `every_secs` seconds.

  Every 10 s until the first epoch this process runs is over (so that a new
  user sees at once that it works and how long it will take), then every 60 s.
  The speed is that of training steps alone: `start_epoch` leaves the pause
  before an epoch's first call ends (validation, checkpoint, a compile) out.
  """

  def __init__(self, num_steps: int, epoch_steps: int, first_step: int,
               every_secs: tuple[float, float] = (10.0, 60.0)):
    self._total = num_steps
    self._epoch_steps = epoch_steps
    self._first_epoch_end = (first_step // epoch_steps + 1) * epoch_steps
    self._every = every_secs
    self._reported = None  # (step, time) of the last report, or of the first call
    self._window = None  # (step, time) the speed is measured from

  def start_epoch(self) -> None:
    """The next call starts the speed's window again: what came before it was no training."""
    self._window = None

  def __call__(self, step: int, images_per_step: int, t: float | None = None) -> None:
    t = time.monotonic() if t is None else t
    if self._window is None:  # The call that ends here compiled, or followed a pause.
      self._window = (step, t)
      self._reported = self._reported or self._window
      return
    (last_step, last_t), (window_step, window_t) = self._reported, self._window
    every = self._every[0] if last_step < self._first_epoch_end else self._every[1]
    if t - last_t < every or step == window_step:
      return
    rate = (step - window_step) / (t - window_t)
    epoch_end = -(-step // self._epoch_steps) * self._epoch_steps
    logging.info("step %d/%d (epoch %d): %.1f steps/s, %.0f images/s; epoch done in %s, "
                 "training in %s", step, self._total, -(-step // self._epoch_steps), rate,
                 rate * images_per_step, _duration((epoch_end - step) / rate),
                 _duration((self._total - step) / rate))
    self._reported = self._window = (step, t)


def _duration(seconds: float) -> str:
  return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
