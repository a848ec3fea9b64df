"""TensorBoard event files without TensorFlow, and the console's progress lines."""

import logging
import os

import numpy as np

from conftest import REPO, read_events
from l0jax import writers


def test_event_files_hold_scalars_histograms_and_hparams(tmp_path):
  writer = writers.MetricWriter(str(tmp_path))
  writer.write_hparams({"lambda_l0": 0.5, "dataset": "synthetic", "use_gate": True})
  writer.write_scalars(14, {"train/loss": 1.5, "val/accuracy": np.float32(0.25)})
  writer.write_histograms(14, {"log_alpha/block1/1x1": np.array([-3.0, 0.5, 2.0])})
  writer.close()
  values = {(e.step, v.tag): v for e in read_events(str(tmp_path)) for v in e.summary.value}
  assert values[14, "train/loss"].simple_value == 1.5
  assert values[14, "val/accuracy"].simple_value == 0.25
  histogram = values[14, "log_alpha/block1/1x1"].histo
  assert (histogram.min, histogram.max, histogram.num) == (-3.0, 2.0, 3)
  hparams = [v.metadata.plugin_data.content for (_, tag), v in values.items()
             if tag == "_hparams_/session_start_info"]
  assert len(hparams) == 1 and b"lambda_l0" in hparams[0] and b"synthetic" in hparams[0]


def test_disabled_writer_writes_nothing(tmp_path):
  writer = writers.MetricWriter(str(tmp_path / "run"), enabled=False)
  writer.write_scalars(1, {"train/loss": 1.0})
  writer.close()
  assert not (tmp_path / "run").exists()


def test_progress_reports_speed_and_time_left(caplog):
  progress = writers.Progress(num_steps=100, epoch_steps=20, first_step=0)
  with caplog.at_level(logging.INFO):
    progress(1, 64, t=100.0)  # the first call compiled: no speed yet
    progress(10, 64, t=105.0)  # within 10 s of it: quiet
    progress(22, 64, t=110.0)  # 21 steps in 10 s
    progress(30, 64, t=130.0)  # after the first epoch: every 60 s only
    progress(62, 64, t=170.0)  # 40 steps in 60 s
  lines = [r.getMessage() for r in caplog.records]
  assert lines == [
      "step 22/100 (epoch 2): 2.1 steps/s, 134 images/s; epoch done in 9 s, training in 37 s",
      "step 62/100 (epoch 4): 0.7 steps/s, 43 images/s; epoch done in 27 s, training in 57 s",
  ]


def test_progress_leaves_the_pause_between_epochs_out_of_the_speed(caplog):
  progress = writers.Progress(num_steps=100, epoch_steps=20, first_step=0)
  with caplog.at_level(logging.INFO):
    progress(1, 64, t=0.0)
    progress(20, 64, t=19.0)  # 1 step/s to the epoch's end, reported
    progress.start_epoch()
    progress(21, 64, t=320.0)  # 300 s of validation and checkpoint before this call ended
    progress(80, 64, t=379.0)
  lines = [r.getMessage() for r in caplog.records]
  assert lines[-1] == ("step 80/100 (epoch 4): 1.0 steps/s, 64 images/s; epoch done in 0 s, "
                       "training in 20 s")


def test_the_readme_names_the_tensorboard_the_quick_start_does():
  readme = open(os.path.join(REPO, "README.md")).read()
  assert writers.TENSORBOARD_INSTALL in readme
