"""The quick start's chain (baseline, pruning, test, export, analysis), on tiny synthetic data."""

import logging
import os

import pytest

from l0jax import quickstart
from l0jax.errors import UserError


def test_quick_start_chains_the_recipes_and_modes(tmp_path, monkeypatch):
  """What each step is given. The steps themselves are test_train's, test_export's and
  test_analysis's business; the whole chain on real data ran for results/quickstart/."""
  calls = []
  monkeypatch.setattr(quickstart.train, "train_and_evaluate",
                      lambda config, workdir: calls.append(("train", workdir, config)))
  for mode in ("test", "export"):
    monkeypatch.setattr(quickstart.checkpoint_modes, f"{mode}_checkpoint",
                        lambda workdir, which, mode=mode: calls.append((mode, workdir, which)) or
                        {"test_accuracy": 0.5, "macs_kept_fraction": 0.5,
                         "params_kept_fraction": 0.5})
  monkeypatch.setattr(quickstart.analysis, "analyze",
                      lambda workdir, which: calls.append(("analyze", workdir, which)))
  quickstart.run(str(tmp_path), data_dir="/data/fmnist")
  baseline, pruned = str(tmp_path / "baseline"), str(tmp_path / "pruned")
  assert [c[:2] for c in calls] == [("train", baseline), ("train", pruned), ("test", baseline),
                                    ("test", pruned), ("export", pruned), ("analyze", pruned)]
  base_config, pruned_config = calls[0][2], calls[1][2]
  assert not base_config.use_gate and pruned_config.use_gate
  for config in (base_config, pruned_config):
    assert config.dataset == "fashion_mnist" and config.data_dir == "/data/fmnist"
    assert config.width_multiplier == 0.25 and config.num_epochs == 2
  assert pruned_config.init_from == baseline and pruned_config.penalty == "macs"
  assert pruned_config.droprate_init == 0.05  # configs/finetune.py's
  assert all(c[2] == "last" for c in calls[2:])


def test_every_step_says_its_command_and_the_end_how_to_get_tensorboard(tmp_path, monkeypatch,
                                                                       caplog, capsys):
  monkeypatch.setattr(quickstart.train, "train_and_evaluate", lambda config, workdir: None)
  metrics = {"test_accuracy": 0.5, "macs_kept_fraction": 0.5, "params_kept_fraction": 0.5}
  for mode in ("test", "export"):
    monkeypatch.setattr(quickstart.checkpoint_modes, f"{mode}_checkpoint",
                        lambda workdir, which: metrics)
  monkeypatch.setattr(quickstart.analysis, "analyze", lambda workdir, which: metrics)
  with caplog.at_level(logging.INFO):
    quickstart.run(str(tmp_path), data_dir="/data/fmnist")
  commands = [r.getMessage() for r in caplog.records if "python main.py" in r.getMessage()]
  for mode, stage in (("test", "baseline"), ("test", "pruned"), ("export", "pruned"),
                      ("analyze", "pruned")):
    assert sum(f"--mode={mode} --checkpoint=last --workdir={tmp_path / stage}" in c
               for c in commands) == 1, (mode, stage, commands)
  assert "pip install tensorboard==2.21.0" in capsys.readouterr().out.splitlines()[-1]


def test_missing_debian_data_says_how_to_install_it(tmp_path, monkeypatch):
  monkeypatch.setattr(quickstart.data, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
  with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
    quickstart.run(str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_commands_are_what_main_py_takes():
  assert quickstart.command("--mode=test", lr_milestones=(1, 2), lambda_l0=40.0) == (
      "python main.py --mode=test --config.lr_milestones='(1,2,)' --config.lambda_l0=40.0")
