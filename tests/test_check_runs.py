"""results/fashion_mnist_2/check_runs.py: a run that differs from the protocol is named."""

import json

import pytest

from test_claims import load

check = load("results", "fashion_mnist_2", "check_runs.py")


def write_run(root, folder, name, config, *, epochs, log):
  run = root / folder / name
  run.mkdir(parents=True)
  (run / "config.json").write_text(json.dumps(config))
  (run / "history.jsonl").write_text("".join(
      json.dumps({"epoch": e, "train_test_time_macs_kept": 0.0998}) + "\n" for e in epochs))
  (run / "sweep.log").write_text("\n".join(log) + "\n")
  return run


@pytest.fixture
def runs(tmp_path, monkeypatch):
  """A budget run and a random mask at its cost, made as the protocol says, in runs/."""
  monkeypatch.setattr(check, "HERE", tmp_path)
  baseline = "/work/protocol/results/fashion_mnist_2/runs/baseline_seed2"
  def made(kind, budget_name):
    # Where the protocol allows either of two values (a field older commits lack), the first.
    config = {key: want[0] if isinstance(want, tuple) else want
              for key, want in check.expected("runs", kind, "0.1", 2).items()}
    config.update(init_from=baseline, init_checkpoint="last")
    if kind == "random":
      config["target_macs"] = 0.0998
    log = [f"$ python /work/protocol/main.py --config=configs/x.py --workdir={budget_name}",
           f"I train.py] Network weights from the last checkpoint of {baseline}; gates ...",
           "$ python /work/protocol/main.py --mode=test --workdir=x"]
    return config, log
  return made


def test_runs_as_the_protocol_says_pass_and_each_difference_is_named(runs, tmp_path):
  config, log = runs("budget", "budget_macs0.1_seed2")
  budget = write_run(tmp_path, "runs", "budget_macs0.1_seed2", config, epochs=range(10), log=log)
  config, log = runs("random", "random_macs0.1_seed2")
  mask = write_run(tmp_path, "runs", "random_macs0.1_seed2", config, epochs=range(15), log=log)
  assert check.deviations(budget, "runs") == check.deviations(mask, "runs") == []

  config["init_checkpoint"] = "best"
  config["target_macs"] = 0.25
  (mask / "config.json").write_text(json.dumps(config))
  found = check.deviations(mask, "runs")
  assert "init_checkpoint='best', not 'last'" in found
  assert "target_macs=0.25, not its budget run's 0.0998" in found
  # sweep.log said the last checkpoint, the config the best: the weights line no longer fits.
  assert any(f.startswith("sweep.log's weights not from") for f in found)
  # What sweep.log says below its test command is not read (there the test's numbers stand).
  (mask / "sweep.log").write_text("\n".join([log[0], log[2], log[1]]) + "\n")
  assert any(f.startswith("sweep.log's weights not from") for f in check.deviations(mask, "runs"))
  # Arm 1b's setting in the registered folder.
  config, log = runs("budget", "budget_macs0.1_seed2")
  arm_1b = write_run(tmp_path, "runs", "budget_macs0.1_seed2b", config, epochs=range(10), log=log)
  assert check.deviations(arm_1b, "runs") == ["a run the protocol does not name"]
  budget.joinpath("config.json").write_text(json.dumps({**config, "log_alpha_bound": 4.6}))
  assert check.deviations(budget, "runs") == ["log_alpha_bound=4.6, not (None, 0.0)"]
  # A run of the amendment's arms made from the registered arms' checkout, with an epoch lost.
  retrain = {**check.expected("bounded", "retrain", "0.1", 2), "init_checkpoint": "last",
             "init_from": "/work/recipe/results/fashion_mnist_2/bounded/budget_macs0.1_seed2"}
  found = check.deviations(write_run(tmp_path, "bounded", "retrain_macs0.1_seed2", retrain,
                                     epochs=[0, 1, 3], log=log), "bounded")
  assert "a command not run from /work/recipe/" in found
  assert "history.jsonl's epochs [0, 1, 3]" in found


def test_the_equal_retraining_view_trains_arms_2_to_4_for_the_retraining_epochs(runs, tmp_path):
  config, log = runs("random", "random_macs0.1_seed2")
  write_run(tmp_path, "runs", "budget_macs0.1_seed2", runs("budget", "b")[0], epochs=range(10),
            log=log)
  (tmp_path / "equal_retraining").mkdir()
  (tmp_path / "equal_retraining" / "budget_macs0.1_seed2").symlink_to(
      "../runs/budget_macs0.1_seed2")  # as run_protocol.sh links it
  config.update(num_epochs=5, lr_milestones=[3, 4])
  view = write_run(tmp_path, "equal_retraining", "random_macs0.1_seed2", config, epochs=range(5),
                   log=log)
  assert check.deviations(view, "equal_retraining") == []
  assert check.deviations(view, "runs") == ["num_epochs=5, not 15",
                                            "lr_milestones=[3, 4], not [10, 12]"]
