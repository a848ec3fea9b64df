"""--mode=analyze on a tiny gated run: its figures, and a summary that agrees with its metrics."""

import json
import os
import shutil

import numpy as np
import pytest
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from conftest import tiny_config
from l0jax import (accounting, analysis, checkpoint_modes, checkpoints, data, gates, locking,
                   networks, run_figures, train, workdirs)
from l0jax import run_config

@pytest.fixture(scope="module")
def gated_run(tmp_path_factory) -> str:
  """A tiny gated run, trained and tested in this process.

  Gates start around the prune threshold (log_alpha ~ N(-2.389, 0.01), the
  threshold -2.398), so that even two short epochs end with both pruned and
  kept channels. Only the initialisation differs from the tests' tiny config,
  so the compiled training step comes from the shared cache.
  """
  workdir = str(tmp_path_factory.mktemp("gated"))
  train.train_and_evaluate(tiny_config(droprate_init=0.916), workdir)
  checkpoint_modes.test_checkpoint(workdir)
  return workdir


def read(workdir: str, name: str) -> dict:
  return json.load(open(os.path.join(workdir, name)))


def table_rows(summary: str) -> list[str]:
  return [l for l in summary.splitlines()
          if l.startswith(("| parameters |", "| MACs |", "| gated channels |"))]


def test_thresholds_are_where_the_test_time_gate_reaches_0_and_1():
  z = np.asarray(gates.test_gate(np.array([analysis.PRUNE_AT - 1e-4, analysis.PRUNE_AT + 1e-4,
                                           analysis.OPEN_AT - 1e-4, analysis.OPEN_AT + 1e-4])))
  assert z[0] == 0 and 0 < z[1] < z[2] < 1 and z[3] == 1
  np.testing.assert_allclose([analysis.PRUNE_AT, analysis.OPEN_AT], [-np.log(11), np.log(11)])


def test_a_gated_run_gets_figures_and_a_summary_that_match_its_metrics(gated_run):
  result = analysis.analyze(gated_run)
  out = os.path.join(gated_run, workdirs.ANALYSIS_DIR)
  assert sorted(result["files"]) == sorted(["log_alpha.png", "log_alpha_trajectories.png",
                                            "channels.png", "trajectories.png", "summary.md"])
  for name in result["files"]:
    assert os.path.getsize(os.path.join(out, name)) > 1000, name

  metrics = read(gated_run, workdirs.TEST_METRICS_FILE)
  best = next(h for h in workdirs.load_history(gated_run)
              if h["step"] == metrics["checkpoint_step"])
  log_alpha = np.concatenate([np.asarray(v, np.float32) for v in best["log_alpha"].values()])
  undecided = np.sum((log_alpha > analysis.PRUNE_AT) & (log_alpha < analysis.OPEN_AT))
  assert result["gates"] == {
      "pruned": metrics["gated_channels_full"] - metrics["gated_channels_kept"],
      "undecided": undecided,
      "open": np.sum(log_alpha >= analysis.OPEN_AT)}
  assert 0 < result["gates"]["pruned"] < len(log_alpha), "the run should prune some channels"
  layers = {l["name"]: l for l in metrics["layers"]}
  graph, _ = networks.channel_graph(tiny_config(), (8, 8, 3), 10)
  # Named as --mode=test's table names them: the layer, not its gate (stage1/block1).
  gated = [layer.name for layer in graph.layers if layer.gate is not None]
  assert list(result["layers"]) == gated and gated[0] == "stage1/block1/conv1"
  for name, counts in result["layers"].items():
    assert counts["open"] + counts["undecided"] == layers[name]["kept_out"], name

  summary = open(os.path.join(out, "summary.md")).read()
  assert f"test accuracy {100 * metrics['test_accuracy']:.2f}%" in summary
  assert f"| MACs | {metrics['macs_full']:,} | {metrics['macs_kept']:,} |" in summary
  assert f"**{result['gates']['undecided']} undecided**" in summary
  assert all(f"| {name} | " in summary for name in gated)


def test_an_untested_run_gets_the_same_costs_from_its_best_checkpoint(gated_run, tmp_path,
                                                                     monkeypatch):
  metrics = read(gated_run, workdirs.TEST_METRICS_FILE)
  workdir = shutil.copytree(gated_run, tmp_path / "untested",
                            ignore=shutil.ignore_patterns(workdirs.TEST_METRICS_FILE,
                                                           workdirs.ANALYSIS_DIR))
  # Counted from its history's gates: neither the data nor the network is needed.
  monkeypatch.setattr(data, "load_dataset", lambda config: pytest.fail("loaded the data"))
  monkeypatch.setattr(train, "setup", lambda config: pytest.fail("built the run"))
  result = analysis.analyze(str(workdir))
  assert not result["tested"] and result["checkpoint_step"] == metrics["checkpoint_step"]
  pruned = metrics["gated_channels_full"] - metrics["gated_channels_kept"]
  assert result["gates"]["pruned"] == pruned
  summary = (workdir / workdirs.ANALYSIS_DIR / "summary.md").read_text()
  assert "not tested at its best checkpoint yet" in summary
  assert table_rows(summary)[:2] == [
      f"| parameters | {metrics['params_full']:,} | {metrics['params_kept']:,} | "
      f"{100 * metrics['params_kept_fraction']:.1f}% |",
      f"| MACs | {metrics['macs_full']:,} | {metrics['macs_kept']:,} | "
      f"{100 * metrics['macs_kept_fraction']:.1f}% |"]


def test_the_last_checkpoint_is_analysed_when_asked_for(gated_run, tmp_path):
  workdir = shutil.copytree(gated_run, tmp_path / "last")  # tested at its best checkpoint
  last = workdirs.load_history(workdir)[-1]
  result = analysis.analyze(str(workdir), "last")
  assert not result["tested"] and result["checkpoint_step"] == last["step"]
  pruned = np.sum(np.concatenate(list(last["log_alpha"].values())) <= analysis.PRUNE_AT)
  assert result["gates"]["pruned"] == pruned
  summary = (workdir / workdirs.ANALYSIS_DIR / "summary.md").read_text()
  assert f"Last checkpoint: epoch {last['epoch'] + 1} (step {last['step']})" in summary


def test_a_run_without_gates_gets_its_trajectories_and_says_so(gated_run, tmp_path):
  # What an ungated run leaves (test_train checks it): no log_alpha in its history.
  workdir = shutil.copytree(gated_run, tmp_path / "ungated", ignore=shutil.ignore_patterns(
      workdirs.ANALYSIS_DIR))
  for name in ("config.json", workdirs.TEST_METRICS_FILE):
    (workdir / name).write_text(json.dumps({**read(workdir, name), "use_gate": False}))
  history = [{k: v for k, v in h.items() if k != "log_alpha"}
             for h in workdirs.load_history(workdir)]
  (workdir / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
  result = analysis.analyze(str(workdir))
  assert result["files"] == ["trajectories.png", "summary.md"]
  assert result["gates"] == {"pruned": 0, "undecided": 0, "open": 0}
  summary = (workdir / workdirs.ANALYSIS_DIR / "summary.md").read_text()
  assert "without gates" in summary and "No gates" in summary


def test_reading_a_run_that_is_training_says_so(gated_run, caplog):
  """Test, export and analyze may read a workdir while it trains; they say which step they read."""
  _, best = checkpoints.chosen_step(gated_run, "best")
  last = checkpoints.manager(gated_run, read_only=True).latest_step()
  assert not any("is being trained" in r.getMessage() for r in caplog.records)
  with locking.exclusive_folder(gated_run, "--workdir"):  # As the training process holds it.
    checkpoints.chosen_step(gated_run, "best")
  message = next(r.getMessage() for r in caplog.records if "is being trained" in r.getMessage())
  assert f"by process {os.getpid()}: this reads its best checkpoint, step {best}" in message
  assert (f"(the newest is step {last})" in message) == (last > best)


def drawn(fig: Figure) -> RendererBase:
  """`fig` laid out and drawn as saving it would; its renderer."""
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  return canvas.get_renderer()


def per_epoch_of(workdir: str) -> tuple[list[dict], run_figures.GatesPerEpoch, list[dict]]:
  """The run's history, its gates per epoch, and --mode=test's costs at the start (epoch 0) and
  at each epoch's end, the start counted from the gates' initial log_alpha."""
  config, history = workdirs.load_config(workdir), workdirs.load_history(workdir)
  graph = analysis.channel_graph(config)
  start = gates.initial_log_alpha(config.droprate_init)
  gate_values = [{k: np.full(len(v), start, np.float32) for k, v in history[0]["log_alpha"].items()}]
  gate_values += [{k: np.asarray(v, np.float32) for k, v in h["log_alpha"].items()}
                  for h in history]
  per_epoch = analysis.gates_per_epoch(history, config, run_config.gate_plan(config), graph)
  return history, per_epoch, [accounting.report(graph, las) for las in gate_values]


def test_trajectories_show_what_the_test_time_network_kept_from_the_start(gated_run):
  history, per_epoch, reports = per_epoch_of(gated_run)
  last_macs = reports[-1]["macs_kept_fraction"]
  fig = run_figures.trajectories_figure(history, len(history), "last", "L0 term", per_epoch,
                                     last_macs)
  kept = next(a for a in fig.axes if a.get_title().startswith("what is kept"))
  lines = {line.get_label(): line for line in kept.get_lines()}
  # As the console's "gates open" and "MACs kept" at each epoch's end, not training's means.
  for label, expected in (
      ("open gates (test-time gate > 0)",
       [r["gated_channels_kept"] / r["gated_channels_full"] for r in reports]),
      ("MACs kept by the test-time network", [r["macs_kept_fraction"] for r in reports]),
      ("parameters kept by the test-time network", [r["params_kept_fraction"] for r in reports])):
    np.testing.assert_array_equal(lines[label].get_xdata(), range(len(history) + 1))
    np.testing.assert_allclose(lines[label].get_ydata(), 100 * np.array(expected), rtol=1e-6)
  tested = next(line for label, line in lines.items() if label.startswith("the last checkpoint"))
  assert f"{100 * last_macs:.1f}% of the MACs" in tested.get_label()
  np.testing.assert_allclose(tested.get_ydata(), [100 * last_macs])


def test_epochs_are_whole_from_the_start_and_no_title_is_cut_off(gated_run):
  history, per_epoch, _ = per_epoch_of(gated_run)
  budget_title = analysis.l0_panel_title(run_config.gate_plan(tiny_config(target_macs=0.5)))
  for fig in (run_figures.trajectories_figure(history, 1, "best", budget_title, per_epoch, 0.5),
              run_figures.log_alpha_trajectory_figure(per_epoch, 1, "best"),
              run_figures.log_alpha_figure(per_epoch.log_alphas[1], "log_alpha at the best "
                                        "checkpoint (epoch 1)\nrun: 99.9% of the MACs and 99.9% "
                                        "of the parameters kept")):
    renderer = drawn(fig)
    for ax in (a for a in fig.axes if a.get_visible() and a.get_xlabel() == "epoch"):
      low, high = ax.get_xlim()
      assert [t for t in ax.get_xticks() if low <= t <= high] == list(range(len(history) + 1))
    for text in [fig._suptitle] + [ax.title for ax in fig.axes]:  # pylint: disable=protected-access
      if text is not None and text.get_text():
        box = text.get_window_extent(renderer)
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, text.get_text()


def test_the_start_is_droprate_inits_log_alpha_or_the_fixed_gates():
  first = {"stage1/block1": np.array([3.0, -4.0], np.float32)}
  trained_config = tiny_config(droprate_init=0.5)
  trained = analysis.starting_log_alphas(trained_config, run_config.gate_plan(trained_config),
                                         first)
  np.testing.assert_array_equal(trained["stage1/block1"], [0.0, 0.0])
  fixed_config = tiny_config(train_gates=False)
  fixed = analysis.starting_log_alphas(fixed_config, run_config.gate_plan(fixed_config), first)
  np.testing.assert_array_equal(fixed["stage1/block1"], first["stage1/block1"])
