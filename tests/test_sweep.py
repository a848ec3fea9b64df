"""The lambda sweep: the runs it plans, and a tiny real one that survives a failed run and resumes.

Every real member costs two main.py processes (seconds of imports and
tracing each), so the real sweep trains one: a baseline with test_train's
settings, whose compiled steps come from the shared cache. The command lines
of the gated members are checked by the planning tests; main.py itself,
fine-tuning from a baseline included, is test_train's business.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import MAIN, REPO, TWO_DEVICES, Program, tiny_flags
from l0jax import cli, locking, workdirs
from l0jax.sweep import planning, reporting, running, status
from l0jax.errors import UserError


def test_each_kind_gets_its_recipe_its_lambda_and_the_settings_meant_for_it(tmp_path):
  settings = planning.parse_settings(["--config.dataset=synthetic", "--config.num_epochs=3",
                                   "--finetune.num_epochs=2", "--scratch.lr_milestones=(1,2)",
                                   "--retrain.num_epochs=4"])
  members = planning.plan(tmp_path, [0.25, 1.0], [20.0, 30.0], settings, [30.0])
  assert [m.name for m in members] == ["baseline", "scratch_lambda0.25", "scratch_lambda1",
                                       "finetune_lambda20", "finetune_lambda30",
                                       "retrain_lambda30"]
  assert [m.lambda_l0 for m in members] == [None, 0.25, 1.0, 20.0, 30.0, 30.0]
  main = [sys.executable, MAIN]
  configs = os.path.join(REPO, "configs")
  expected = {
      "baseline": [f"--config={configs}/baseline.py", "--config.dataset=synthetic",
                   "--config.num_epochs=3"],
      "scratch_lambda0.25": [f"--config={configs}/gated.py", "--config.dataset=synthetic",
                             "--config.num_epochs=3", "--config.lr_milestones=(1,2)",
                             "--config.lambda_l0=0.25"],
      "finetune_lambda20": [f"--config={configs}/finetune.py", "--config.dataset=synthetic",
                            "--config.num_epochs=2", "--config.lambda_l0=20.0",
                            f"--config.init_from={tmp_path}/baseline",
                            "--config.init_checkpoint=last"],
      "retrain_lambda30": [f"--config={configs}/retrain.py", "--config.dataset=synthetic",
                           "--config.num_epochs=4",
                           f"--config.init_from={tmp_path}/finetune_lambda30",
                           "--config.init_checkpoint=last"],
  }
  for member in members:
    train, test = member.commands(tmp_path)
    workdir = f"--workdir={tmp_path}/{member.name}"
    assert test == main + ["--mode=test", "--checkpoint=last", workdir]
    if member.name in expected:
      config, *settings = expected[member.name]
      assert train == main + [config, workdir, *settings]


def test_budget_runs_get_their_recipe_their_target_and_their_retraining(tmp_path):
  settings = planning.parse_settings(["--config.num_epochs=3", "--budget.num_epochs=2"])
  members = planning.plan(tmp_path, [], [20.0], settings, [20.0],
                       [("macs", 0.5), ("params", 0.25)], retrain_budgets=True)
  assert [m.name for m in members] == ["baseline", "finetune_lambda20", "budget_macs0.5",
                                       "budget_params0.25", "retrain_lambda20",
                                       "retrain_macs0.5", "retrain_params0.25"]
  assert [m.target for m in members[-2:]] == [("macs", 0.5), ("params", 0.25)]
  configs = os.path.join(REPO, "configs")
  train, _ = members[3].commands(tmp_path)
  assert train[2:] == [f"--config={configs}/prune_to_budget.py",
                       f"--workdir={tmp_path}/budget_params0.25", "--config.num_epochs=2",
                       "--config.target_macs=0.0", "--config.target_params=0.25",
                       f"--config.init_from={tmp_path}/baseline", "--config.init_checkpoint=last"]
  train, _ = members[-1].commands(tmp_path)
  assert train[-2:] == [f"--config.init_from={tmp_path}/budget_params0.25",
                        "--config.init_checkpoint=last"]
  # Every member that starts from another starts from the checkpoint that was tested, whatever
  # its recipe's default (configs/prune_to_budget.py's is the best by validation).
  assert all(m.settings["init_checkpoint"] == planning.CHECKPOINT for m in members[1:])
  for bad in ([("macs", 0.0)], [("params", 1.5)], [("macs", 0.5), ("macs", 0.5)]):
    with pytest.raises(UserError):
      planning.plan(tmp_path, [], [], settings, targets=bad)


@pytest.mark.parametrize("args", [["--config.lambda_l0=1"], ["--finetune.init_from=/a/run"],
                                  ["--budget.target_macs=0.5"], ["--control.init_checkpoint=best"],
                                  ["--num_epochs=3"], ["--config.num_epochs", "3"]])
def test_arguments_it_cannot_hand_on_are_refused(args):
  with pytest.raises(UserError):
    planning.parse_settings(args)


@pytest.mark.parametrize("setting,refusal", [
    ("--config.width_multiplier=0", "baseline: config: width_multiplier=0.0 must be > 0"),
    ("--retrain.nonexistent=1", "retrain_lambda20: the config has no field 'nonexistent'")])
def test_a_members_config_that_main_py_would_refuse_is_refused_before_anything_is_written(
    tmp_path, setting, refusal):
  sweep_dir = tmp_path / "sweep"
  result = start_sweep(sweep_dir, "--finetune_lambdas=20", "--retrain_lambdas=20",
                       setting).wait()
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith(f"error: {refusal}"), lines
  assert not sweep_dir.exists()


@pytest.mark.parametrize("metrics,history", [
    ("[]", '{"epoch": 0, "step": 1}'),
    ('{"checkpoint": "last", "test_accuracy": "high"}', '{"epoch": 0, "step": 1}'),
    ('{"checkpoint": "last"}', '{"epoch": 0, "step": 1, "val_accuracy": null}')])
def test_a_members_files_of_wrong_types_are_refused_in_one_line(tmp_path, metrics, history):
  (tmp_path / workdirs.TEST_METRICS_FILE).write_text(metrics)
  (tmp_path / workdirs.HISTORY_FILE).write_text(history + "\n")
  with pytest.raises(UserError, match=f"{tmp_path}.*{workdirs.TEST_METRICS_FILE}"):
    reporting.measured(tmp_path)


def test_a_lambda_listed_twice_is_refused(tmp_path):
  with pytest.raises(UserError, match="twice"):
    planning.plan(tmp_path, [0.5, 0.5], [], planning.parse_settings([]))


def test_only_a_fine_tuned_run_can_be_retrained(tmp_path):
  with pytest.raises(UserError, match="each must be one of --finetune_lambdas=20"):
    planning.plan(tmp_path, [], [20.0], planning.parse_settings([]), [30.0])


def test_a_package_installed_without_its_checkout_says_so_in_one_line(tmp_path):
  # A non-editable install copies only the package: no main.py, no configs/ beside it.
  shutil.copytree(os.path.join(REPO, "l0jax"), tmp_path / "l0jax")
  result = subprocess.run([sys.executable, "-m", "l0jax.sweep", f"--sweep_dir={tmp_path / 's'}"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: no main.py and configs/ beside the l0jax package ({tmp_path}): run this from the "
      "checkout's root, or install the checkout with `pip install -e .`"]
  assert not (tmp_path / "s").exists()


def test_a_run_tested_at_its_best_checkpoint_is_tested_again(tmp_path):
  metrics = tmp_path / workdirs.TEST_METRICS_FILE
  assert not reporting.is_finished(tmp_path)
  metrics.write_text(json.dumps({"checkpoint": "best", "test_accuracy": 0.9}))
  assert not reporting.is_finished(tmp_path)
  metrics.write_text(json.dumps({"checkpoint": "last", "test_accuracy": 0.9}))
  assert reporting.is_finished(tmp_path)


def test_masks_from_a_budget_runs_gates_start_from_the_baseline_with_no_target(tmp_path):
  members = planning.plan(tmp_path, [], [], planning.parse_settings([]), [], [("macs", 0.25)],
                       masks=["decided", "random_widths"], seeds=[3])
  by_name = {m.name: m for m in members}
  for method in ("decided", "random_widths"):
    member = by_name[f"{method}_macs0.25_seed3"]
    assert member.after == "budget_macs0.25_seed3" and member.cost_of is None
    assert member.settings["mask_from"] == str(tmp_path / "budget_macs0.25_seed3")
    assert member.settings["init_from"] == str(tmp_path / "baseline_seed3")
    assert member.settings["target_macs"] == member.settings["target_params"] == "0.0"


def test_a_comparison_plans_controls_masks_and_seeds_each_from_its_own_seeds_runs(tmp_path):
  settings = planning.parse_settings(["--control.num_epochs=4", "--l1_norm.num_epochs=4"])
  members = planning.plan(tmp_path, [], [], settings, [], [("macs", 0.5)], True, masks=["l1_norm"],
                       control=True, scratch_budgets=["macs0.5"], seeds=[0, 1])
  names = [m.name for m in members]
  assert names[:5] == ["baseline_seed0", "budget_macs0.5_seed0", "scratch_macs0.5_seed0",
                       "control_seed0", "retrain_macs0.5_seed0"]
  assert names[5] == "l1_norm_macs0.5_seed0" and len(names) == 12 and names[6] == "baseline_seed1"
  by_name = {m.name: m for m in members}
  mask = by_name["l1_norm_macs0.5_seed1"]
  assert mask.settings["init_from"] == str(tmp_path / "baseline_seed1")
  assert mask.settings["seed"] == "1" and mask.settings["mask"] == "l1_norm"
  assert mask.after == mask.cost_of == "budget_macs0.5_seed1"
  assert by_name["control_seed1"].settings["num_epochs"] == "4"
  assert "init_from" not in by_name["scratch_macs0.5_seed0"].settings
  # From scratch to a budget: its own recipe, whose gates start more open than gated.py's.
  train, _ = by_name["scratch_macs0.5_seed0"].commands(tmp_path)
  assert train[2] == f"--config={os.path.join(REPO, 'configs')}/prune_from_scratch.py"
  config = cli.command_config(train[1:])
  assert (config.droprate_init, config.target_macs, config.use_gate) == (0.2, 0.5, True)
  # A mask's budget is the cost its budget run realised, read once that run is tested.
  (tmp_path / "budget_macs0.5_seed1").mkdir()
  (tmp_path / "budget_macs0.5_seed1" / workdirs.TEST_METRICS_FILE).write_text(
      json.dumps({"macs_kept_fraction": 0.4871, "params_kept_fraction": 0.7}))
  train, _ = running.realised_cost(mask, tmp_path).commands(tmp_path)
  assert "--config.target_macs=0.4871" in train and "--config.target_params=0.0" in train
  with pytest.raises(UserError, match="not one of l1_norm, l1_norm_relative, random"):
    planning.plan(tmp_path, [], [], settings, [], [("macs", 0.5)], masks=["magnitude"])
  with pytest.raises(UserError, match="needs --target_macs"):
    planning.plan(tmp_path, [], [], settings, [], [], masks=["random"])
  # From scratch only to the budgets named, as the protocol's arm 6 (0.5, not 0.25).
  both = planning.plan(tmp_path, [], [], settings, [], [("macs", 0.5), ("macs", 0.25)],
                    scratch_budgets=["macs0.5"])
  assert [m.name for m in both if m.kind == "scratch"] == ["scratch_macs0.5"]
  with pytest.raises(UserError, match="macs0.25 is not one of the budgets \\(macs0.5\\)"):
    planning.plan(tmp_path, [], [], settings, [], [("macs", 0.5)], scratch_budgets=["macs0.25"])


def test_the_status_says_each_members_state_and_estimates_what_is_left_without_a_test_number(
    tmp_path):
  settings = planning.parse_settings(["--baseline.num_epochs=3", "--budget.num_epochs=4",
                                      "--retrain.num_epochs=2"])
  members = planning.plan(tmp_path, [], [], settings, [], [("macs", 0.5)], True)
  def trained(name, *seconds, tested=False):
    workdir = tmp_path / name
    workdir.mkdir()
    for epoch, s in enumerate(seconds):
      workdirs.append_history(workdir, {"epoch": epoch, "step": epoch + 1, "epoch_seconds": s})
    if tested:
      workdirs.write_test_metrics(workdir, {"checkpoint": "last", "test_accuracy": 0.9123})
  trained("baseline", 60.0, 60.0, 60.0, tested=True)
  trained("budget_macs0.5", 120.0)
  report = status.report(tmp_path, members)
  assert report.splitlines()[:4] == [
      f"{tmp_path}: 1 of 3 runs finished, 0 running, 1 stopped, 1 not started",
      "  finished     baseline         3 of 3 epochs, 3.0 min of training",
      "  stopped      budget_macs0.5   1 of 4 epochs, 2.0 min of training",
      "  not started  retrain_macs0.5  0 of 2 epochs"]
  with workdirs.training_lock(str(tmp_path / "budget_macs0.5")):  # as its main.py holds it
    assert "  running      budget_macs0.5   1 of 4 epochs" in status.report(tmp_path, members)
  # Left: the budget run's 3 epochs at its own 120 s, the retrain's 2 at the sweep's median, 60 s.
  assert report.splitlines()[-1].startswith(
      "Trained: 4 epochs in 5.0 min. Left: 5 epochs, about 8.0 min at the median")
  assert "0.9123" not in report and "91.2" not in report  # the baseline's test accuracy


def test_groups_over_seeds_pair_each_run_with_its_seeds_control():
  def run(name, kind, seed, accuracy, macs):
    return {"name": f"{name}_seed{seed}", "kind": kind, "seed": seed, "target": None,
            "target_kind": None, "lambda_l0": None, "test_accuracy": accuracy,
            "val_accuracy": accuracy, "macs_kept_fraction": macs, "params_kept_fraction": macs}
  runs = [run("control", "control", s, a, 1.0) for s, a in enumerate([0.90, 0.92, 0.91])]
  runs += [run("l1_norm_macs0.5", "l1_norm", s, a, m)
           for s, a, m in zip(range(3), [0.89, 0.90, 0.90], [0.49, 0.5, 0.48])]
  groups = {g["name"]: g for g in reporting.seed_groups(runs)}
  assert set(groups) == {"control", "l1_norm_macs0.5"} and "versus" not in groups["control"]
  pruned = groups["l1_norm_macs0.5"]
  assert pruned["seeds"] == [0, 1, 2] and pruned["versus"] == "control"
  assert pruned["test_accuracy"]["mean"] == pytest.approx(0.89667, abs=1e-5)
  assert pruned["macs_kept_fraction"]["sd"] == pytest.approx(0.01)
  # Differences -0.01, -0.02, -0.01: mean -0.01333, sd 0.005774, half-width 4.303 sd / sqrt(3).
  paired = pruned["paired_difference"]
  assert paired["mean"] == pytest.approx(-0.013333, abs=1e-6)
  assert paired["high"] - paired["mean"] == pytest.approx(4.303 * 0.0057735 / 3**0.5, abs=1e-6)
  table = "\n".join(reporting.groups_markdown(reporting.seed_groups(runs)))
  assert "| l1_norm_macs0.5 | 0,1,2 | 89.67% +- 0.58 |" in table and "-1.33 pp [" in table


def start_sweep(sweep_dir, *args: str, env=None) -> Program:
  """`python -m l0jax.sweep`, without scratch runs, its members one epoch of `runlocal`."""
  return Program("-m", "l0jax.sweep", f"--sweep_dir={sweep_dir}", "--scratch_lambdas=",
                 *tiny_flags(num_epochs=1), *args, env=env)


def mtimes(workdir) -> dict[str, int]:
  """Modification times of everything in a workdir but the sweep's logs."""
  logs = (workdirs.SWEEP_LOG_FILE, workdirs.SWEEP_TEST_LOG_FILE)
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(workdir) for f in files if f not in logs}


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
  """A sweep whose fine-tuned run has a broken setting, then the same sweep without that run.

  The first sees two devices, as on a machine with two GPUs.
  """
  sweep_dir = tmp_path_factory.mktemp("sweep")
  # A setting that only the member's run can refuse (it counts the devices).
  first = start_sweep(sweep_dir, "--finetune_lambdas=20", "--finetune.batch_size=33",
                      env=TWO_DEVICES).wait()
  first_results = json.loads((sweep_dir / reporting.RESULTS_FILE).read_text())
  baseline_files = mtimes(sweep_dir / "baseline")
  second = start_sweep(sweep_dir, "--finetune_lambdas=").wait()
  return sweep_dir, first, first_results, baseline_files, second


def test_a_failed_run_does_not_stop_the_sweep(tiny_sweep):
  _, first, results, _, _ = tiny_sweep
  assert first.returncode == 1, first.stderr[-3000:]
  assert "finetune_lambda20: training failed" in first.stderr and "batch_size=33" in first.stderr
  assert [r["name"] for r in results["runs"]] == ["baseline"]
  assert results["unfinished"] == ["finetune_lambda20"]


def test_a_rerun_skips_finished_runs(tiny_sweep):
  sweep_dir, _, _, baseline_files, second = tiny_sweep
  assert second.returncode == 0, second.stderr[-3000:]
  assert "baseline: finished before, skipped" in second.stderr
  assert "baseline: training" not in second.stderr
  assert mtimes(sweep_dir / "baseline") == baseline_files
  assert (sweep_dir / reporting.FRONT_FILE).stat().st_size > 1000


def test_the_status_runs_nothing_and_watches_a_sweep_that_holds_its_lock(tiny_sweep):
  sweep_dir, _, _, baseline_files, _ = tiny_sweep
  with locking.exclusive_folder(str(sweep_dir), "--sweep_dir"):  # as a running sweep holds it
    shown = start_sweep(sweep_dir, "--finetune_lambdas=20", "--status").wait()
  assert shown.returncode == 0, shown.stderr[-3000:]
  assert "  finished     baseline           1 of 1 epochs" in shown.stdout
  assert "  stopped      finetune_lambda20  0 of 1 epochs" in shown.stdout  # its failed attempt
  assert mtimes(sweep_dir / "baseline") == baseline_files


def test_a_runs_training_log_shows_no_test_number_and_its_test_log_does(tiny_sweep):
  sweep_dir, _, _, _, _ = tiny_sweep
  accuracy = json.loads((sweep_dir / "baseline" / workdirs.TEST_METRICS_FILE).read_text())[
      "test_accuracy"]
  training = (sweep_dir / "baseline" / workdirs.SWEEP_LOG_FILE).read_text()
  testing = (sweep_dir / "baseline" / workdirs.SWEEP_TEST_LOG_FILE).read_text()
  assert "--mode=test" not in training and "test accuracy" not in training
  assert "--mode=test" in testing and f"test accuracy {accuracy:.4f}" in testing


def table_rows(table: str) -> dict[str, list[str]]:
  rows = ([c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
          if re.match(rf"\| ({'|'.join(planning.KINDS)})", line))
  return {cells[0]: cells for cells in rows}


def test_the_table_and_results_hold_each_runs_test_metrics(tiny_sweep, tmp_path):
  sweep_dir, _, _, _, _ = tiny_sweep
  # The real baseline, and a pruned run beside it: its metrics made up, with digits to round.
  sweep_dir = shutil.copytree(sweep_dir, tmp_path / "sweep")
  tuned = shutil.copytree(sweep_dir / "baseline", sweep_dir / "finetune_lambda20",
                          dirs_exist_ok=True)  # it holds the failed attempt's log
  metrics = json.loads((tuned / workdirs.TEST_METRICS_FILE).read_text())
  metrics.update(use_gate=True, lambda_l0=20.0, test_accuracy=metrics["test_accuracy"] - 0.00456,
                 params_kept_fraction=0.432149, macs_kept_fraction=0.387651)
  (tuned / workdirs.TEST_METRICS_FILE).write_text(json.dumps(metrics))
  results = reporting.collect(sweep_dir, planning.plan(sweep_dir, [], [20.0], planning.parse_settings([])),
                          "python -m l0jax.sweep ...")
  reporting.write_results(sweep_dir, results)
  assert results == json.loads((sweep_dir / reporting.RESULTS_FILE).read_text())
  assert results["unfinished"] == [] and results["best_trade_off"] == "finetune_lambda20"
  table = (sweep_dir / reporting.TABLE_FILE).read_text()
  rows = table_rows(table)
  assert sorted(rows) == ["baseline", "finetune_lambda20"]
  for run in results["runs"]:
    workdir = sweep_dir / run["name"]
    metrics = json.loads((workdir / workdirs.TEST_METRICS_FILE).read_text())
    history = [json.loads(l) for l in (workdir / "history.jsonl").read_text().splitlines()]
    for key in ("test_accuracy", "params_kept_fraction", "macs_kept_fraction", "macs_kept"):
      assert run[key] == metrics[key]
    assert run["train_seconds"] == sum(h["epoch_seconds"] for h in history)
    _, lam, accuracy, change, target, params, macs, epochs, _ = rows[run["name"]]
    assert lam == ("-" if run["kind"] == "baseline" else "20") and target == "-"
    assert float(accuracy.rstrip("%")) == pytest.approx(100 * metrics["test_accuracy"], abs=0.005)
    assert float(params.rstrip("%")) == pytest.approx(100 * metrics["params_kept_fraction"],
                                                      abs=0.05)
    assert float(macs.rstrip("%")) == pytest.approx(100 * metrics["macs_kept_fraction"], abs=0.05)
    assert int(epochs) == len(history) == 1
  assert rows["finetune_lambda20"][3] == "-0.46 pp"
  assert rows["finetune_lambda20"][5:7] == ["43.2%", "38.8%"]
  assert ("Best trade-off, chosen by validation accuracy among the pruned runs with at most 50% "
          "of the MACs: finetune_lambda20") in table


def test_a_failed_runs_line_is_its_error_not_jaxs_note():
  output = "\n".join([
      "I1125 train.py:1] starting", "Traceback (most recent call last):",
      '  File "main.py", line 1, in <module>',
      "ValueError: Received incompatible devices for jitted computation", "-" * 20,
      "For simplicity, JAX has removed its internal frames from the traceback of the following "
      "exception. Set JAX_TRACEBACK_FILTERING=off to include these.", ""])
  assert running._failure_line(output) == (
      "ValueError: Received incompatible devices for jitted computation")
  assert running._failure_line("I1125 x.py:1] fine\nerror: config: seed=-1 must be\n") == (
      "error: config: seed=-1 must be")
  assert running._failure_line("killed\n") == "killed"


def children(pid: int) -> list[int]:
  with open(f"/proc/{pid}/task/{pid}/children") as f:
    return [int(p) for p in f.read().split()]


def gone(pid: int, timeout: float = 60) -> bool:
  """Whether process `pid` has ended (or is a zombie) within `timeout` seconds."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    try:
      with open(f"/proc/{pid}/stat") as f:
        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
          return True
    except FileNotFoundError:
      return True
    time.sleep(0.1)
  return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_stopped_sweep_leaves_no_member_running(tmp_path, signum):
  """SIGTERM and SIGINT are passed to the running member, which the sweep waits for; after a
  SIGKILL of the sweep, its member gets a SIGTERM from the kernel."""
  stopped = start_sweep(tmp_path, "--finetune_lambdas=")
  deadline = time.monotonic() + 120
  while (not children(stopped.proc.pid) and stopped.proc.poll() is None
         and time.monotonic() < deadline):
    time.sleep(0.05)
  member, = children(stopped.proc.pid)
  stopped.proc.send_signal(signum)
  result = stopped.wait(120)
  assert gone(member), f"member {member} still running"
  if signum != signal.SIGKILL:
    assert result.returncode == 128 + signum, result.stderr[-3000:]
    assert f"Stopped by signal {signum}, after the running member" in result.stderr, (
        result.stderr[-3000:])
