"""Bad input through main.py: one `error:` line on stderr, exit 2, nothing written or deleted.

Each case is a fresh process, as a user would start it. They are started
together (a few at a time) once per module, because most of their cost is
importing JAX; each test then checks its own case.
"""

import concurrent.futures
import errno
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import subprocess
import tarfile
import time
import typing

import pytest
from absl import logging as absl_logging
from matplotlib.figure import Figure

from conftest import MAIN, TWO_DEVICES, CreatesAFile, Program, run_main, tiny_config, tiny_flags
from l0jax import checkpoints, cli, locking, plots, train, workdirs
from l0jax.errors import UserError, os_failure

TRAIN = ["--config=configs/gated.py", *tiny_flags()]


def tree_listing(path) -> dict[str, tuple[int, int, str]]:
  """Every file and folder under `path` with its size, mtime and a hash of its bytes: what
  "untouched" compares."""
  listing = {}
  for root, dirs, files in os.walk(path):
    for name, is_file in [(d, False) for d in dirs] + [(f, True) for f in files]:
      full = os.path.join(root, name)
      stat = os.stat(full)
      digest = hashlib.sha256(open(full, "rb").read()).hexdigest() if is_file else ""
      listing[os.path.relpath(full, path)] = (stat.st_size, stat.st_mtime_ns, digest)
  return listing


def truncated_cifar_archive(folder) -> str:
  """An official-looking cifar-10-python.tar.gz, cut off halfway as by a failed download."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
    for name in ("data_batch_1", "data_batch_2"):
      blob = os.urandom(50_000)
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  path = os.path.join(folder, "cifar-10-python.tar.gz")
  with open(path, "wb") as f:
    f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
  return path


def crafted_cifar_folder(folder) -> str:
  """cifar-10-batches-py/ whose first batch would create a file in `folder` when unpickled."""
  batches = folder / "cifar-10-batches-py"
  batches.mkdir(parents=True)
  for name in [f"data_batch_{i}" for i in range(2, 6)] + ["test_batch"]:
    (batches / name).write_bytes(b"")
  batch = {b"data": CreatesAFile(folder / "marker"), b"labels": []}
  (batches / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
  return str(folder)


def saved_run(workdir, **overrides) -> str:
  """A workdir as training leaves it (config, history, a checkpoint folder), for a tiny network."""
  workdir.mkdir()
  workdirs.save_config(str(workdir), tiny_config(**overrides))
  (workdir / "history.jsonl").write_text(json.dumps({"epoch": 0, "step": 14}) + "\n")
  (workdir / "checkpoints" / "14").mkdir(parents=True)
  (workdir / "checkpoints" / "14" / "commit_success.txt").write_text("ok")
  return str(workdir)


class Case(typing.NamedTuple):
  result: subprocess.CompletedProcess
  workdir: str  # must not exist afterwards, unless it is `watched`
  watched: str | None  # a folder that must be left exactly as it was
  before: dict | None  # its listing before the run


# A sitecustomize module: libraries warn, both ways, as the program imports JAX.
LIBRARIES_WARN = """
import logging, sys, warnings
def warn(event, args):
  if event == "import" and args[0] == "jax" and not warned:
    warned.append(1)
    warnings.warn("a library's deprecation", UserWarning)
    logging.getLogger("some_library").warning("a library's warning")
warned = []
sys.addaudithook(warn)
"""


@pytest.fixture(scope="module")
def cases(tmp_path_factory, without_tensorflow) -> dict[str, Case]:
  root = tmp_path_factory.mktemp("errors")
  (root / "warn").mkdir()
  (root / "warn" / "sitecustomize.py").write_text(LIBRARIES_WARN)
  libraries_warn = {"PYTHONPATH": str(root / "warn")}
  missing = str(root / "missing")
  empty, empty_workdir = root / "empty", root / "empty_workdir"
  empty.mkdir()
  empty_workdir.mkdir()
  archive_dir = root / "archive"
  archive_dir.mkdir()
  truncated_cifar_archive(archive_dir)
  crafted = crafted_cifar_folder(root / "crafted")
  wider = saved_run(root / "wider", width_multiplier=0.5)
  ungated = saved_run(root / "ungated", use_gate=False)
  resumed = saved_run(root / "resumed")
  truncated_config = saved_run(root / "truncated_config")
  text = (root / "truncated_config" / "config.json").read_text()
  (root / "truncated_config" / "config.json").write_text(text[:len(text) // 2])
  config_folder = saved_run(root / "config_folder")
  (root / "config_folder" / "config.json").unlink()
  (root / "config_folder" / "config.json").mkdir()
  raising_config = root / "raising.py"
  raising_config.write_text("def get_config():\n  return 1 / 0\n")
  broken_config = root / "broken.py"
  broken_config.write_text("from configs import gated\n\nget_config = gated.get_config(\n")
  config_list = saved_run(root / "config_list")
  (root / "config_list" / "config.json").write_text("[]")
  config_wrong_type = saved_run(root / "config_wrong_type")
  (root / "config_wrong_type" / "config.json").write_text('{"batch_size": "abc"}')
  metrics_list = saved_run(root / "metrics_list")
  (root / "metrics_list" / workdirs.TEST_METRICS_FILE).write_text("[]")
  history_wrong_types = saved_run(root / "history_wrong_types")
  (root / "history_wrong_types" / "history.jsonl").write_text(
      '[]\n5\n{"epoch": "0", "step": 14}\n{"epoch": 0}\n')
  older = saved_run(root / "older")  # Saved before val_split existed: it used the seeded split.
  saved = json.loads((root / "older" / "config.json").read_text())
  del saved["val_split"]
  (root / "older" / "config.json").write_text(json.dumps(saved))
  # A finished run copied without its checkpoints: training again would rewrite its history.
  uncheckpointed = saved_run(root / "uncheckpointed")
  (root / "uncheckpointed" / "history.jsonl").write_text(
      "".join(json.dumps({"epoch": e, "step": 14 * (e + 1)}) + "\n" for e in range(3)))
  shutil.rmtree(root / "uncheckpointed" / "checkpoints")
  busy = saved_run(root / "busy")  # This process holds its lock while the cases run.
  (root / "a_file").write_text("")

  # name: (args, env, workdir that must not appear, folder that must stay as it is)
  specs = {
      "unknown_key": (TRAIN + ["--config.nonexistent=1"], None, missing, None),
      "wrong_type": (TRAIN + ["--config.batch_size=abc"], None, missing, None),
      "wrong_type_in_tuple": (TRAIN + ["--config.lr_milestones=(1,a)"], None, missing, None),
      "negative_lambda": (TRAIN + ["--config.lambda_l0=-0.5"], None, missing, None),
      "droprate_init_1": (TRAIN + ["--config.droprate_init=1.0"], None, missing, None),
      "indivisible_batch": (TRAIN + ["--config.batch_size=33"], TWO_DEVICES, missing, None),
      "libraries_warn": (TRAIN + ["--config.batch_size=33"], {**TWO_DEVICES, **libraries_warn},
                         missing, None),
      "unknown_dataset": (TRAIN + ["--config.dataset=imagenet"], None, missing, None),
      "unknown_model": (TRAIN + ["--config.model=alexnet"], None, missing, None),
      "unsupported_depth": (TRAIN + ["--config.model=resnet", "--config.depth=21"], None, missing,
                            None),
      "gate_residual_on_vgg": (TRAIN + ["--config.model=vgg", "--config.depth=11",
                                        "--config.gate_residual=True"], None, missing, None),
      "resume_other_model": (TRAIN + ["--config.model=vgg", "--config.depth=11"], None, resumed,
                             resumed),
      "negative_seed": (TRAIN + ["--config.seed=-1"], None, missing, None),
      "seed_of_33_bits": (TRAIN + [f"--config.seed={2**32}"], None, missing, None),
      "process_id_alone": (TRAIN + ["--process_id=1"], None, missing, None),
      "missing_config_file": (["--config=configs/nope.py"], None, missing, None),
      "missing_data_dir": (TRAIN + ["--config.dataset=cifar10",
                                    f"--config.data_dir={root / 'no_data'}"], None, missing, None),
      "empty_data_dir": (TRAIN + ["--config.dataset=cifar10", f"--config.data_dir={empty}"],
                         without_tensorflow, missing, str(empty)),
      "truncated_archive": (TRAIN + ["--config.dataset=cifar10",
                                     f"--config.data_dir={archive_dir}"],
                            None, missing, str(archive_dir)),
      # The watched folder is where the pickle would create its file.
      "pickle_runs_code": (TRAIN + ["--config.dataset=cifar10", f"--config.data_dir={crafted}"],
                           None, missing, crafted),
      "test_missing_workdir": (["--mode=test"], None, missing, None),
      "export_empty_workdir": (["--mode=export"], None, str(empty_workdir), str(empty_workdir)),
      "init_from_nowhere": (TRAIN + [f"--config.init_from={missing}"], None,
                            str(root / "tuned_from_nowhere"), None),  # its own: cases run at once
      "init_from_wider": (TRAIN + [f"--config.init_from={wider}"], None, str(root / "tuned"),
                          wider),
      "retrain_without_init_from": (TRAIN + ["--config.train_gates=False"], None, missing, None),
      "retrain_an_ungated_run": (TRAIN + ["--config.train_gates=False",
                                          f"--config.init_from={ungated}"], None,
                                 str(root / "retrained"), ungated),
      "unknown_init_checkpoint": (TRAIN + ["--config.init_checkpoint=middle"], None, missing, None),
      "resume_other_network": (TRAIN + ["--config.width_multiplier=0.5"], None, resumed, resumed),
      "truncated_config_json": (TRAIN, None, truncated_config, truncated_config),
      "config_json_is_a_folder": (["--mode=test"], None, config_folder, config_folder),
      "config_json_is_a_list": (["--mode=test"], None, config_list, config_list),
      "config_json_field_of_a_wrong_type": (["--mode=test"], None, config_wrong_type,
                                            config_wrong_type),
      "test_metrics_is_a_list": (["--mode=analyze"], None, metrics_list, metrics_list),
      "history_of_wrong_types": (["--mode=analyze"], None, history_wrong_types,
                                 history_wrong_types),
      "config_file_raises": ([f"--config={raising_config}"], None, missing, None),
      "config_file_does_not_parse": ([f"--config={broken_config}"], None, missing, None),
      "unknown_variant": (["--config=configs/gated.py:fast"], None, missing, None),
      "resume_other_split": (TRAIN + ["--config.val_split=hash"], None, older, older),
      "history_without_checkpoints": (TRAIN, None, uncheckpointed, uncheckpointed),
      "workdir_in_use": (TRAIN, None, busy, busy),
      "workdir_under_a_file": (TRAIN, None, str(root / "a_file" / "run"), None),
      "target_above_1": (TRAIN + ["--config.target_macs=1.5"], None, missing, None),
      "negative_target": (TRAIN + ["--config.target_params=-0.5"], None, missing, None),
      "two_targets": (TRAIN + ["--config.target_macs=0.5", "--config.target_params=0.5"], None,
                      missing, None),
      "target_without_gates": (TRAIN + ["--config.target_macs=0.5", "--config.use_gate=False"],
                               None, missing, None),
      "target_with_fixed_gates": (TRAIN + ["--config.target_macs=0.5", "--config.train_gates=False",
                                           f"--config.init_from={resumed}"], None, missing, None),
      "target_below_the_floor": (TRAIN + ["--config.target_macs=0.01"], None, missing, None),
      "unknown_mask": (TRAIN + ["--config.mask=magnitude"], None, missing, None),
      "mask_without_target": (["--config=configs/mask.py", "--config.target_macs=0",
                               f"--config.init_from={resumed}"], None, missing, None),
      "debug": (TRAIN + ["--config.lambda_l0=-0.5", "--debug"], None, missing, None),
  }
  # Each case its own absent workdir: a training process creates it while it runs.
  specs = {name: (args, env, str(root / f"absent_{name}") if workdir == missing else workdir,
                  watched) for name, (args, env, workdir, watched) in specs.items()}
  before = {name: tree_listing(watched) if watched else None
            for name, (_, _, _, watched) in specs.items()}
  with (locking.exclusive_folder(busy, "--workdir"),
        concurrent.futures.ThreadPoolExecutor(4) as pool):
    futures = {name: pool.submit(run_main, *args, f"--workdir={workdir}", env=env)
               for name, (args, env, workdir, _) in specs.items()}
  return {name: Case(futures[name].result(), workdir, watched, before[name])
          for name, (_, _, workdir, watched) in specs.items()}


def check_error_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
  """Exit status 2 and one error line on stderr, holding `fragments`."""
  assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert lines == [lines[-1]] and lines[-1].startswith("error: "), result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in lines[-1], lines[-1]


def check_refused(case: Case, *fragments: str) -> None:
  """The case failed with exit status 2 and one error line holding `fragments`, touching nothing."""
  check_error_line(case.result, *fragments)
  if case.workdir != case.watched:
    assert not os.path.exists(case.workdir), os.listdir(case.workdir)
  if case.watched is not None:
    assert tree_listing(case.watched) == case.before


# case name: fragments its error line must hold; "{watched}" stands for the case's watched folder.
REFUSALS = {
    "unknown_key": ["no field 'nonexistent'"],
    "wrong_type": ["--config.batch_size=abc"],
    "wrong_type_in_tuple": ["lr_milestones"],
    "negative_lambda": ["lambda_l0=-0.5 must be >= 0"],
    "droprate_init_1": ["droprate_init=1.0 must lie in (0, 1)"],
    "indivisible_batch": ["batch_size=33", "2 devices"],
    "libraries_warn": ["batch_size=33", "2 devices"],  # and nothing above it
    "unknown_dataset": ["dataset='imagenet'"],
    "unknown_model": ["model='alexnet' is not one of googlenet, resnet, vgg"],
    "unsupported_depth": ["depth=21: a CIFAR ResNet has 6n + 2 layers"],
    "gate_residual_on_vgg": ["gate_residual=True gates a ResNet's stage widths"],
    "resume_other_model": ["model: 'resnet' there, 'vgg' here", "left untouched"],
    "negative_seed": ["seed=-1 must be an integer in [0, 2**32)"],
    "seed_of_33_bits": [f"seed={2**32} must be"],
    "process_id_alone": ["--process_id set without --multihost"],
    "missing_config_file": ["configs/nope.py"],
    "missing_data_dir": ["does not exist"],
    "empty_data_dir": ["cifar-10-python.tar.gz"],
    "truncated_archive": [os.path.join("{watched}", "cifar-10-python.tar.gz")],
    "pickle_runs_code": ["Refused", "data_batch_1", "cannot run code"],
    "test_missing_workdir": ["no training run"],
    "export_empty_workdir": ["no training run"],
    "init_from_nowhere": ["init_from=", "does not exist"],
    "init_from_wider": ["{watched}", "width_multiplier: 0.5 there, 0.25 here"],
    "retrain_without_init_from": ["train_gates=False", "init_from=WORKDIR_OF_A_GATED_RUN"],
    "retrain_an_ungated_run": ["{watched}", "use_gate: False there, True here"],
    "unknown_init_checkpoint": ["init_checkpoint='middle' is not one of best, last"],
    "resume_other_network": ["width_multiplier: 0.25 there, 0.5 here", "left untouched"],
    "truncated_config_json": [os.path.join("{watched}", "config.json"), "is damaged",
                              "JSONDecodeError", "delete it and train again"],
    "config_json_is_a_folder": [os.path.join("{watched}", "config.json"), "is damaged",
                                "IsADirectoryError"],
    "config_json_is_a_list": [os.path.join("{watched}", "config.json"),
                              "is damaged (it holds a list, not a JSON object)"],
    "config_json_field_of_a_wrong_type": [os.path.join("{watched}", "config.json"), "is damaged",
                                          "batch_size"],
    "test_metrics_is_a_list": [os.path.join("{watched}", workdirs.TEST_METRICS_FILE),
                               "is damaged (it holds a list"],
    "history_of_wrong_types": ["has no history.jsonl entries"],
    "config_file_raises": ["raising.py, line 2: ZeroDivisionError: division by zero"],
    "config_file_does_not_parse": ["broken.py, line 3: SyntaxError"],
    "unknown_variant": ["gated.py, line", "--config=FILE:fast: the one variant of a recipe is "
                        "runlocal"],
    "resume_other_split": ["val_split: 'seeded' there, 'hash' here"],
    "history_without_checkpoints": ["history.jsonl records 3 epochs but", "no checkpoint",
                                    "left untouched"],
    "workdir_in_use": [f"is in use by process {os.getpid()}"],
    "workdir_under_a_file": ["cannot write in --workdir=", "Not a directory"],
    "target_above_1": ["target_macs=1.5 must lie in (0, 1]"],
    "negative_target": ["target_params=-0.5 must lie in (0, 1]"],
    "two_targets": ["target_macs=0.5 and target_params=0.5", "set one target"],
    "target_without_gates": ["use_gate=True and train_gates=True"],
    "target_with_fixed_gates": ["use_gate=True and train_gates=True"],
    "target_below_the_floor": ["target_macs=0.01 is below what this network can reach",
                               "ungated layers still keep"],
    "unknown_mask": ["mask='magnitude' is not one of l1_norm, l1_norm_relative, random"],
    "mask_without_target": ["mask=l1_norm keeps channels", "a target_macs (or target_params)"],
}


def test_every_refusal_case_is_checked(cases):
  assert set(cases) == set(REFUSALS) | {"debug"}


@pytest.mark.parametrize("name", REFUSALS)
def test_bad_input_is_refused(cases, name):
  case = cases[name]
  check_refused(case, *(f.format(watched=case.watched) for f in REFUSALS[name]))


def test_help_exits_0_and_points_to_the_config_fields():
  result = run_main("--help")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "--config.FIELD=VALUE" in result.stdout and "l0jax/run_config.py" in result.stdout


def test_debug_shows_the_traceback(cases):
  result = cases["debug"].result
  assert result.returncode != 0 and "Traceback" in result.stderr
  assert "lambda_l0=-0.5 must be >= 0" in result.stderr
  assert not os.path.exists(cases["debug"].workdir)


def library_record(path: str, message: str, level: int = logging.ERROR) -> logging.LogRecord:
  return logging.LogRecord("x", level, path, 1, message, None, None)


@pytest.mark.parametrize("tracebacks", [False, True])
def test_background_errors_keep_one_line_and_unretrieved_futures_none(tracebacks):
  """An unretrieved future is logged when the garbage collector finds it, which can be after
  the `error:` line that must end the output."""
  quiet = cli.QuietLibraries(tracebacks=tracebacks)
  unretrieved = library_record("/py/asyncio/base_events.py",
                               "Future exception was never retrieved\nfuture: <Future ...>")
  assert quiet.filter(unretrieved) == tracebacks
  failed = library_record("/py/orbax/checkpoint/x.py", "Write failed\nTraceback ...")
  assert quiet.filter(failed)
  assert failed.getMessage() == ("Write failed\nTraceback ..." if tracebacks
                                 else "Write failed (traceback left out)")
  assert not quiet.filter(library_record("/py/orbax/x.py", "Saved", logging.INFO))
  assert quiet.filter(library_record("/l0jax/train.py", "Epoch 1", logging.INFO))


def test_nothing_is_logged_after_the_error_line(capfd, monkeypatch):
  handler = absl_logging.get_absl_handler()
  monkeypatch.setattr(logging.getLogger(), "handlers", [handler])  # As absl.app.run has it.
  monkeypatch.setattr(handler, "level", handler.level)  # Both as they were, after the test.
  with pytest.raises(SystemExit) as exited, cli.one_line_errors("--mode=train", "Kept."):
    raise UserError("the data is bad")
  logging.getLogger("asyncio").error("Task was destroyed but it is pending!")
  assert exited.value.code == 2
  assert capfd.readouterr().err == "error: the data is bad\n"


def test_a_second_run_in_a_workdir_is_refused_until_the_first_is_killed(tmp_path):
  """Two real processes: the second is refused at once, naming the first; a killed first blocks
  nothing (its lock file, with its PID, stays behind)."""
  workdir = str(tmp_path / "run")
  first = Program(MAIN, *TRAIN, "--config.num_epochs=1000", f"--workdir={workdir}")
  pid = first.proc.pid
  try:
    deadline = time.monotonic() + 120
    while locking.holder(workdir) != f"process {pid}":
      assert first.proc.poll() is None and time.monotonic() < deadline, first.stderr[-3000:]
      time.sleep(0.2)
    second = run_main(*TRAIN, "--config.num_epochs=1000", f"--workdir={workdir}")
  finally:
    first.proc.kill()
    first.wait()
  check_error_line(second, f"is in use by process {pid}")
  lock_file = os.path.join(workdir, locking.LOCK_FILE)
  assert open(lock_file).read().strip() == str(pid)
  assert locking.holder(workdir) is None
  with locking.exclusive_folder(workdir, "--workdir"):
    assert open(lock_file).read().strip() == str(os.getpid())
  assert not os.path.exists(lock_file)


def test_a_second_sweep_in_a_sweep_dir_is_refused(tmp_path):
  sweep_dir = tmp_path / "sweep"
  with locking.exclusive_folder(str(sweep_dir), "--sweep_dir"):
    before = tree_listing(sweep_dir)
    result = Program("-m", "l0jax.sweep", f"--sweep_dir={sweep_dir}").wait()
    check_refused(Case(result, str(sweep_dir), str(sweep_dir), before),
                  f"--sweep_dir={sweep_dir} is in use by process {os.getpid()}")


# Runs `python ARGS...` where a file cannot grow past N bytes (EFBIG), as on a disk that is full.
# Not preexec_fn: forking this process, which runs JAX's threads, can deadlock.
SMALL_FILES_ONLY = ("import os, resource, signal, sys; n = int(sys.argv[1]); "
                    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                    "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
                    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")


def test_a_refused_write_names_its_file_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert os_failure(PermissionError(errno.EACCES, "Permission denied", "run/x")) == (
      f"Permission denied ({tmp_path / 'run' / 'x'})")
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "big").symlink_to("/dev/full")  # Full once the file is open: no name.
  with pytest.raises(OSError) as e:
    workdirs.write_file("run/big", b"x" * 2**20)
  assert os_failure(e.value) == f"No space left on device ({tmp_path / 'run' / 'big'})"
  (tmp_path / "run" / "figure.png").symlink_to("/dev/full")
  with pytest.raises(OSError) as e:  # --mode=analyze's figures, the sweep's front.
    plots.save_figure(Figure(), "run/figure.png")
  assert os_failure(e.value) == f"No space left on device ({tmp_path / 'run' / 'figure.png'})"


def test_a_history_line_is_appended_whole_or_not_at_all(tmp_path, monkeypatch):
  path = tmp_path / "history.jsonl"
  path.write_text('{"epoch": 0}\n')

  real_write, writes = os.write, []

  def short_then_full(fd, data):  # As a disk that fills up in the middle of the line.
    writes.append(data)
    if len(writes) > 1:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_write(fd, data[:5])

  monkeypatch.setattr(os, "write", short_then_full)
  with pytest.raises(OSError, match="No space left") as e:
    workdirs.append_line(path, '{"epoch": 1}')
  assert e.value.filename == str(path)
  assert path.read_text() == '{"epoch": 0}\n'


def test_a_full_disk_stops_the_run_in_one_line_keeping_what_was_complete(tmp_path):
  """Orbax's background save fails: one line, exit 2; the checkpoint before is untouched.

  What a failed save leaves is what a save killed midway leaves (test_resume resumes from that).
  """
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(num_epochs=1), workdir)
  kept = tree_listing(os.path.join(workdir, workdirs.CHECKPOINTS_DIR))
  history = open(os.path.join(workdir, workdirs.HISTORY_FILE)).read()

  # Epoch 1's checkpoint does not fit: its files are larger than the limit, the others not.
  # Resumed with the tiny_config that began the run, as flags.
  result = Program("-c", SMALL_FILES_ONLY, "20000", MAIN, *TRAIN, f"--workdir={workdir}").wait()
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --mode=train stopped") and "File too large" in last, last
  assert "run the same command again to resume" in last
  after = tree_listing(os.path.join(workdir, workdirs.CHECKPOINTS_DIR))
  assert {k: v for k, v in after.items() if k in kept} == kept
  assert workdirs.load_config(workdir) == tiny_config()  # Whole, as the resume wrote it.
  assert not [name for name in os.listdir(workdir) if name.endswith(".tmp")]
  epochs = [json.loads(l)["epoch"] for l in open(os.path.join(workdir, workdirs.HISTORY_FILE))]
  assert open(os.path.join(workdir, workdirs.HISTORY_FILE)).read().startswith(history)
  assert epochs in ([0], [0, 1])  # Epoch 1's line, if written, is whole; a resume rewrites it.
  assert checkpoints.manager(workdir, read_only=True).all_steps() == [14]  # Where it resumes.
