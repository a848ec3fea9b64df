"""The training program: optimiser, steps, data order, and whole runs through main.py."""

import concurrent.futures
import importlib.util
import json
import os
import re
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from conftest import GOOGLENET, REPO, TWO_DEVICES, read_events, run_main, tiny_config, tiny_flags
from l0jax import accounting, batches, checkpoints, cli, googlenet, masks, networks, optimizer
from l0jax import run_config, train, warm_start, workdirs
from l0jax.errors import UserError
from l0jax.gates import OPEN_AT


def load_config_file(name: str, *arg: str):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*arg)


def test_a_continued_run_takes_the_data_and_network_of_its_source(tmp_path):
  base, older = tmp_path / "base", tmp_path / "older"
  base.mkdir()
  older.mkdir()
  workdirs.save_config(str(base), tiny_config(use_gate=False, width_multiplier=0.5))
  config = load_config_file("finetune")
  config.init_from = str(base)
  tuned = workdirs.with_source_fields(str(tmp_path / "tuned"), config, given={"init_from"})
  assert (tuned.dataset, tuned.width_multiplier, tuned.synthetic_image_size) == (
      "synthetic", 0.5, 8)
  assert tuned.use_gate and tuned.lambda_l0 == config.lambda_l0  # the recipe's own
  # What the command line gives stays, for init_source to refuse if it does not fit.
  wider = workdirs.with_source_fields(str(tmp_path / "tuned"), config,
                                         given={"init_from", "width_multiplier"})
  assert wider.width_multiplier == 1.0 and wider.dataset == "synthetic"
  # Resuming keeps the run's own network and split; a config saved before val_split
  # existed used the seeded one.
  saved = tiny_config(width_multiplier=0.5).to_dict()
  del saved["val_split"]
  (older / "config.json").write_text(json.dumps(saved))
  resumed = workdirs.with_source_fields(str(older), load_config_file("gated"), given=())
  assert (resumed.val_split, resumed.width_multiplier, resumed.dataset) == (
      "seeded", 0.5, "synthetic")


def test_a_run_that_keeps_or_masks_anothers_gates_takes_their_layout(tmp_path):
  baseline, pruned = tmp_path / "baseline", tmp_path / "pruned"
  for workdir, config in ((baseline, tiny_config(**GOOGLENET, use_gate=False)),
                          (pruned, tiny_config(**GOOGLENET, gate_reduce=True))):
    workdir.mkdir()
    workdirs.save_config(str(workdir), config)
  retrain = load_config_file("retrain")
  retrain.init_from = str(pruned)
  assert workdirs.with_source_fields(str(tmp_path / "rt"), retrain, given={"init_from"}
                                     ).gate_reduce
  mask = load_config_file("mask")
  mask.update(init_from=str(baseline), mask="decided", mask_from=str(pruned), target_macs=0.0)
  assert workdirs.with_source_fields(str(tmp_path / "m"), mask,
                                     given={"init_from", "mask", "mask_from"}).gate_reduce
  # A mask by a rule gates what its own config asks for, not what the baseline had (none).
  mask.update(mask="random", mask_from="", target_macs=0.5)
  for gate_reduce in (True, False):
    mask.gate_reduce = gate_reduce
    assert workdirs.with_source_fields(str(tmp_path / "m"), mask, given={"init_from"}
                                       ).gate_reduce == gate_reduce
  # Given on the command line, it stays, for init_source to refuse.
  retrain.gate_reduce = False
  kept = workdirs.with_source_fields(str(tmp_path / "rt"), retrain,
                                     given={"init_from", "gate_reduce"})
  assert not kept.gate_reduce
  with pytest.raises(UserError, match="is a different network: gate_reduce: True there, False"):
    warm_start.init_source(str(pruned), kept, with_gates=True)


def test_readme_config_table_has_every_field_and_every_recipes_value():
  with open(os.path.join(REPO, "README.md")) as f:
    rows = [line.split("|")[1:3] for line in f if line.startswith("| `")]
  base = run_config.base_config()
  for field in base:
    row = next((r for r in rows if f"`{field}`" in r[0]), None)
    assert row is not None, f"README's config table lacks {field}"
    for recipe in sorted(os.listdir(os.path.join(REPO, "configs"))):
      name = recipe.removesuffix(".py")
      if recipe.endswith(".py") and load_config_file(name)[field] != base[field]:
        assert name in row[1], f"README's row of {field} lacks {name}'s value"


def test_runlocal_is_each_recipe_at_its_size():
  recipes = [n.removesuffix(".py") for n in os.listdir(os.path.join(REPO, "configs"))
             if n.endswith(".py")]
  assert len(recipes) >= 6
  for name in recipes:
    full = load_config_file(name)
    full.update(run_config.RUNLOCAL)
    assert load_config_file(name, "runlocal").to_dict() == full.to_dict(), name
  with pytest.raises(UserError, match="the one variant of a recipe is runlocal"):
    load_config_file("gated", "fast")


def test_gated_without_gates_is_the_baseline():
  gated = load_config_file("gated")
  gated.use_gate = False
  assert gated.to_dict() == load_config_file("baseline").to_dict()


def test_defaults_are_the_pytorch_originals_recipes():
  scratch, finetune = load_config_file("gated"), load_config_file("finetune")
  assert (scratch.num_epochs, scratch.batch_size, scratch.learning_rate, scratch.weight_decay) == (
      180, 128, 1e-3, 1e-4)
  assert tuple(scratch.lr_milestones) == (100, 150) and scratch.lr_factor == 0.1
  assert scratch.droprate_init == 0.5 and finetune.droprate_init == 0.05
  assert tuple(finetune.lr_milestones) == (10, 60, 100, 130, 160) and finetune.lr_factor == 0.5


def test_schedule_steps_down_at_the_milestones():
  config = tiny_config(learning_rate=1.0, lr_milestones=(2, 3), lr_factor=0.5)
  schedule = optimizer.learning_rate_schedule(config, steps_per_epoch=10)
  assert [float(schedule(s)) for s in (0, 19, 20, 29, 30)] == [1.0, 1.0, 0.5, 0.5, 0.25]


def test_weight_decay_spares_the_gates():
  config = tiny_config(learning_rate=0.1, weight_decay=0.5)
  network, params, _ = networks.create_network(config, (8, 8, 3), 10, [127.0], [70.0])
  tx = optimizer.create_optimizer(config, optimizer.learning_rate_schedule(config, 1))
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zero_grads, tx.init(params), params)
  moved = {jax.tree_util.keystr(p): bool(jnp.any(u != 0))
           for p, u in jax.tree_util.tree_flatten_with_path(updates)[0]}
  assert not any(v for k, v in moved.items() if "log_alpha" in k)
  assert all(v for k, v in moved.items() if "kernel" in k)


def test_the_gates_learn_at_their_scale_of_the_weights_rate():
  def first_update(scale):
    config = tiny_config(learning_rate=0.1, gate_lr_scale=scale)
    _, params, _ = networks.create_network(config, (8, 8, 3), 10, [127.0], [70.0])
    tx = optimizer.create_optimizer(config, optimizer.learning_rate_schedule(config, 1))
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    leaves = jax.tree_util.tree_flatten_with_path(updates)[0]
    split = lambda gate: [np.asarray(u) for p, u in leaves if ("log_alpha" in str(p)) == gate]
    return split(True), split(False)
  gates_1, weights_1 = first_update(1.0)
  gates_10, weights_10 = first_update(10.0)
  assert gates_1 and all(np.all(g != 0) for g in gates_1)
  for a, b in zip(gates_10, gates_1):
    np.testing.assert_allclose(a, 10 * b, rtol=1e-6)
  for a, b in zip(weights_10, weights_1):
    np.testing.assert_array_equal(a, b)


def test_training_gates_stay_within_the_log_alpha_bound():
  def gates_after_steps(bound):
    config = tiny_config(learning_rate=0.1, gate_lr_scale=30.0, lambda_l0=100.0,
                         log_alpha_bound=bound)
    network, params, batch_stats = networks.create_network(config, (8, 8, 3), 10, [127.0],
                                                           [70.0])
    tx = optimizer.create_optimizer(config, optimizer.learning_rate_schedule(config, 100))
    state = train.TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))
    images = jnp.zeros((4, 8, 8, 3), jnp.uint8)
    step = jax.jit(lambda s: train.train_step(s, images, jnp.zeros(4, jnp.int32),
                                              jax.random.key(0), network=network, tx=tx,
                                              plan=run_config.gate_plan(config)))
    for _ in range(3):
      state, _ = step(state)
    return np.concatenate([np.ravel(x) for p, x in jax.tree_util.tree_flatten_with_path(
        state.params)[0] if "log_alpha" in jax.tree_util.keystr(p)])
  # The penalty drives every gate down by about 3 (Adam: the rate, 0.1 x 30) a step.
  assert gates_after_steps(0.0).min() < -5
  np.testing.assert_array_equal(gates_after_steps(2.5), -2.5)


def test_a_log_alpha_bound_that_would_keep_gates_from_opening_is_refused():
  assert run_config.OPEN_AT == pytest.approx(OPEN_AT, abs=1e-12)
  with pytest.raises(UserError, match=r"log_alpha_bound=2.0 must be 0 \(unbounded\) or more "
                     r"than log\(11\) = 2.398"):
    run_config.validate(tiny_config(log_alpha_bound=2.0))


def test_epoch_order_is_a_seeded_permutation():
  a = batches.epoch_order(0, 3, 100, 32)
  assert a.shape == (3, 32) and len(np.unique(a)) == 96
  np.testing.assert_array_equal(a, batches.epoch_order(0, 3, 100, 32))
  assert not np.array_equal(a, batches.epoch_order(0, 4, 100, 32))
  assert not np.array_equal(a, batches.epoch_order(1, 3, 100, 32))


@pytest.mark.parametrize("use_gate", [False, True])
def test_train_step_lowers_the_loss_on_a_fixed_batch(use_gate):
  config = tiny_config(use_gate=use_gate, learning_rate=3e-3)
  network, params, batch_stats = networks.create_network(config, (8, 8, 3), 10, [127.0], [70.0])
  tx = optimizer.create_optimizer(config, optimizer.learning_rate_schedule(config, 100))
  state = train.TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (32, 8, 8, 3)), jnp.uint8)
  labels = jnp.asarray(rng.integers(0, 10, 32), jnp.int32)
  step = jax.jit(lambda s: train.train_step(s, images, labels, jax.random.key(0), network=network,
                                            tx=tx, plan=run_config.gate_plan(config)))
  losses = []
  for _ in range(15):
    state, metrics = step(state)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.7 * losses[0], losses
  if use_gate:
    assert float(metrics["l0"]) > 0 and 0 < float(metrics["open_gates"]) <= 1


def abstract_train_state(config) -> tuple[networks.Network, optax.GradientTransformation,
                                          train.TrainState]:
  """A tiny network (8x8x3 images, 10 classes), its optimizer and a TrainState of shapes only:
  what tracing a step needs, without compiling the initialisation."""
  network, abstract = networks.describe_network(config, (8, 8, 3), 10, [127.0], [70.0])
  _, params, batch_stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
  tx = optimizer.create_optimizer(config, optimizer.learning_rate_schedule(config, 100))
  state = jax.eval_shape(lambda p, b: train.TrainState(jnp.zeros((), jnp.int32), p, b, tx.init(p)),
                         params, batch_stats)
  return network, tx, state


def test_bfloat16_steps_compute_in_bfloat16_and_keep_float32_state_and_loss():
  config = tiny_config(compute_dtype="bfloat16", **GOOGLENET)
  network, tx, state = abstract_train_state(config)
  images = jnp.zeros((4, 8, 8, 3), jnp.uint8)
  step = lambda s: train.train_step(s, images, jnp.zeros(4, jnp.int32), jax.random.key(0),
                                    network=network, tx=tx, plan=run_config.gate_plan(config))
  new_state, metrics = jax.eval_shape(step, state)
  float32 = jnp.dtype(jnp.float32)
  assert {x.dtype for x in jax.tree.leaves((new_state.params, new_state.batch_stats,
                                            new_state.opt_state)) if x.ndim} == {float32}
  assert {m.dtype for m in metrics.values()} <= {float32}
  # The network's convolutions (forward and backward) and 1x1 matmuls run in
  # bfloat16; only the augmentation's resampling matmuls stay float32.
  lines = str(jax.make_jaxpr(step)(state)).splitlines()
  convs = [line for line in lines if "= conv_general_dilated[" in line]
  dots = [line for line in lines if "= dot_general[" in line]
  assert len(convs) > 20 and all(":bf16[" in line for line in convs), convs[:3]
  assert sum(":bf16[" not in line for line in dots) == 2, dots


def test_run_once_gives_the_bits_of_the_default_compile():
  """On an initialisation with every kind of draw the network's makes. XLA's default is level 3
  (xla/debug_options_flags.cc); named here, as the suite's own default is 1 (conftest)."""
  init = lambda key: nnx.state(googlenet.InceptionBlock(
      8, googlenet.Inception(4, 4, 4, 4, 4, 4), use_gate=True, droprate_init=0.5,
      dtype=jnp.float32, bfloat16_matmuls=False, rngs=nnx.Rngs(params=key)))
  key = jax.random.key(3)
  default = jax.jit(init).lower(key).compile({"xla_backend_optimization_level": 3})
  for a, b in zip(jax.tree.leaves(networks.run_once(init, key)), jax.tree.leaves(default(key)),
                  strict=True):
    np.testing.assert_array_equal(a, b)


def test_bfloat16_matmuls_multiply_in_bfloat16_and_keep_float32_activations():
  config = tiny_config(compute_dtype="bfloat16_matmuls", **GOOGLENET)
  network, tx, state = abstract_train_state(config)
  step = lambda s: train.train_step(s, jnp.zeros((4, 8, 8, 3), jnp.uint8), jnp.zeros(4, jnp.int32),
                                    jax.random.key(0), network=network, tx=tx,
                                    plan=run_config.gate_plan(config))
  ops = list(_equations(jax.make_jaxpr(step)(state).jaxpr))
  convs = [e for e in ops if e.primitive.name == "conv_general_dilated"]
  dots = [e for e in ops if e.primitive.name == "dot_general"]
  bf16 = lambda e: {v.aval.dtype for v in e.invars} == {jnp.dtype(jnp.bfloat16)}
  # Every convolution, forward and backward, multiplies bfloat16; so do all
  # dots but the augmentation's two resampling matmuls and the small dense head
  # (forward and two gradients). All sum in float32.
  assert len(convs) > 20 and all(map(bf16, convs))
  assert sum(not bf16(e) for e in dots) == 5 and len(dots) > 20
  assert {e.outvars[0].aval.dtype for e in convs + dots} == {jnp.dtype(jnp.float32)}
  # Nothing else computes in bfloat16 (a kernel is flipped for its gradient):
  # the activations stay float32.
  others = [e for e in ops if e.primitive.name not in ("conv_general_dilated", "dot_general",
                                                        "convert_element_type", "rev")]
  assert not [e for e in others if any(v.aval.dtype == jnp.bfloat16 for v in e.outvars)]


def _equations(jaxpr):
  """The equations of `jaxpr` and of every jaxpr nested in them."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else [param]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _equations(inner)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, without_tensorflow) -> dict[str, subprocess.CompletedProcess | str]:
  """A tiny baseline and a tiny fine-tuned gated run from it, each trained then tested; and what
  the tests below do with them through main.py, each on its own copy of the run it reads.

  Every process costs seconds of imports and tracing, mostly on one core, so they
  run two at a time, each once the processes it needs have ended. The results are
  keyed by job; the workdirs by "base" and "tuned".
  """
  root = tmp_path_factory.mktemp("runs")
  base, tuned = str(root / "base"), str(root / "tuned")

  def copy(source: str, name: str) -> str:
    return str(shutil.copytree(source, root / name))

  jobs = {  # name: (jobs it waits for, what it runs)
      "train_base": ((), lambda: run_main("--config=configs/baseline.py", f"--workdir={base}",
                                          *tiny_flags())),
      "without_tensorflow": ((), lambda: run_main(
          "--config=configs/gated.py", f"--workdir={root / 'without_tensorflow'}",
          *tiny_flags(num_epochs=1, log_every_steps=6), env=without_tensorflow)),
      "test_base": (("train_base",), lambda: run_main("--mode=test", f"--workdir={base}")),
      "train_tuned": (("train_base",), lambda: run_main(
          "--config=configs/finetune.py", f"--workdir={tuned}", f"--config.init_from={base}",
          *tiny_flags(lr_milestones=(1,)))),
      "test_tuned": (("train_tuned",), lambda: run_main("--mode=test", f"--workdir={tuned}")),
      "retrain": (("train_tuned",), lambda: run_main(
          "--config=configs/retrain.py", f"--workdir={root / 'retrained'}",
          f"--config.init_from={tuned}", *tiny_flags(num_epochs=1))),
      "test_last": (("test_base",), lambda: run_main(
          "--mode=test", "--checkpoint=last", f"--workdir={copy(base, 'last')}")),
      "test_on_two": (("test_base",), lambda: run_main(
          "--mode=test", f"--workdir={copy(base, 'on_two')}", env=TWO_DEVICES)),
      "mask": (("train_base",), lambda: run_main(
          "--config=configs/mask.py", f"--workdir={root / 'masked'}", f"--config.init_from={base}",
          "--config.mask=random", "--config.target_macs=0.4", *tiny_flags(num_epochs=1))),
      "mask_decided": (("train_tuned",), lambda: run_main(
          "--config=configs/mask.py", f"--workdir={root / 'decided'}", f"--config.init_from={base}",
          "--config.mask=decided", f"--config.mask_from={tuned}", "--config.target_macs=0",
          *tiny_flags(num_epochs=1))),
      "analyze_retrained": (("retrain",), lambda: run_main(
          "--mode=analyze", "--checkpoint=last", f"--workdir={root / 'retrained'}")),
      "export": (("test_tuned",), lambda: run_main(
          "--mode=export", f"--workdir={copy(tuned, 'export')}")),
      "export_on_two": (("test_tuned",), lambda: run_main(
          "--mode=export", f"--workdir={copy(tuned, 'export_on_two')}", env=TWO_DEVICES)),
  }
  # Each job waits only for jobs listed before it, which have all started: no deadlock.
  futures = {}

  def run(name: str) -> subprocess.CompletedProcess:
    needs, command = jobs[name]
    for need in needs:
      result = futures[need].result()
      if result.returncode != 0:
        return result  # What stopped it, for its test to show.
    return command()

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    for name in jobs:
      futures[name] = pool.submit(run, name)
  for name in ("train_base", "test_base", "train_tuned", "test_tuned"):
    result = futures[name].result()
    assert result.returncode == 0, (name, result.stderr[-3000:])
  return {"base": base, "tuned": tuned, "root": str(root),
          **{name: future.result() for name, future in futures.items()}}


def test_a_run_writes_config_history_checkpoints_and_test_metrics(runs):
  base, tuned = runs["base"], runs["tuned"]
  for workdir in (base, tuned):
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["dataset"] == "synthetic" and config["num_epochs"] == 2
    history = [json.loads(l) for l in open(os.path.join(workdir, "history.jsonl"))]
    assert [h["epoch"] for h in history] == [0, 1] and history[-1]["step"] == 28
    metrics = json.load(open(os.path.join(workdir, "test_metrics.json")))
    assert 0 <= metrics["test_accuracy"] <= 1
    best = max(history, key=lambda h: (h["val_accuracy"], h["step"]))
    assert metrics["checkpoint"] == "best" and metrics["checkpoint_step"] == best["step"]
    # ResNet-8 at width 0.25 (4, 8, 16 channels) on 8x8 images, by hand: the stem 3x3x3x4 + BN;
    # blocks of two 3x3 convs + BN, 4-4-4 at 8x8, 4-8-8 and 8-16-16 at stride 2; a 16x10 head.
    assert metrics["params_full"] == (108 + 8) + (144 + 8) * 2 + (288 + 576 + 32) + (
        1152 + 2304 + 64) + 170 == 5_006
    assert metrics["macs_full"] == 64 * (108 + 288) + 16 * (288 + 576) + 4 * (
        1152 + 2304) + 160 == 53_152
    assert len(metrics["layers"]) == 1 + 3 * 2 + 1
  output = runs["test_base"].stdout
  assert "test accuracy" in output and "no gates, every channel kept" in output
  assert "log_alpha" not in history_line(base) and "log_alpha" in history_line(tuned)


def history_line(workdir: str) -> dict:
  return json.loads(open(os.path.join(workdir, "history.jsonl")).readline())


def test_finetuning_starts_from_the_baselines_weights(runs):
  base = runs["base"]
  config = tiny_config(init_from=base, droprate_init=0.05)
  network, params, batch_stats = networks.create_network(config, (8, 8, 3), 10, [127.0], [70.0])
  params, batch_stats = warm_start.load_weights(base, config, params, batch_stats,
                                                with_gates=False)
  saved = saved_state(base, "best")
  np.testing.assert_array_equal(params["stem"]["conv"]["kernel"][...],
                                saved["params"]["stem"]["conv"]["kernel"]["value"])
  np.testing.assert_array_equal(batch_stats["stages"][2][0]["conv2"]["bn"]["var"][...],
                                saved["batch_stats"]["stages"]["2"]["0"]["conv2"]["bn"]["var"]["value"])
  # The gates are fresh, at droprate_init = 0.05: log_alpha ~ log(0.95 / 0.05).
  for log_alpha in network.graph.log_alphas(nnx.merge(network.graphdef, params,
                                                      batch_stats)).values():
    np.testing.assert_allclose(log_alpha, np.log(19.0), atol=0.05)


def succeeded(runs, name: str) -> subprocess.CompletedProcess:
  """The job's process, which must have ended well."""
  result = runs[name]
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_the_last_checkpoint_is_tested_when_asked_for(runs):
  succeeded(runs, "test_last")
  metrics = json.load(open(os.path.join(runs["root"], "last", "test_metrics.json")))
  assert metrics["checkpoint"] == "last" and metrics["checkpoint_step"] == 28


def saved_state(workdir: str, which: str) -> dict:
  mngr, step = checkpoints.chosen_step(workdir, which)
  return mngr.restore(step, args=ocp.args.StandardRestore())


def test_retraining_keeps_the_pruning_runs_gates_and_trains_its_weights(runs):
  tuned, retrained = runs["tuned"], os.path.join(runs["root"], "retrained")
  result = succeeded(runs, "retrain")
  assert "the last checkpoint of" in result.stderr and "its gates fixed" in result.stderr
  source, after = saved_state(tuned, "last"), saved_state(retrained, "last")
  gates = lambda state: {jax.tree_util.keystr(path): v for path, v in
                         jax.tree_util.tree_flatten_with_path(state["params"])[0]
                         if "log_alpha" in jax.tree_util.keystr(path)}
  assert gates(source) and all(np.array_equal(v, gates(after)[k]) for k, v in gates(source).items())
  kernel = lambda state: state["params"]["stem"]["conv"]["kernel"]["value"]
  assert not np.array_equal(kernel(source), kernel(after))
  history = history_line(retrained)
  assert history["train_loss"] == history["train_cross_entropy"]  # No L0 term.
  succeeded(runs, "analyze_retrained")
  summary = open(os.path.join(retrained, "analysis", "summary.md")).read()
  assert f"retrained with the gates of `{tuned}` fixed" in summary
  assert os.path.getsize(os.path.join(retrained, "analysis", "trajectories.png")) > 1000


def test_a_mask_prunes_the_baseline_to_its_budget_and_stays_fixed(runs):
  base, masked = runs["base"], os.path.join(runs["root"], "masked")
  result = succeeded(runs, "mask")
  assert "Mask random:" in result.stderr and "gates from the random mask" in result.stderr
  after = saved_state(masked, "last")
  log_alphas = {f"stage{int(s) + 1}/block1": np.asarray(stage["0"]["gate"]["log_alpha"]["value"])
                for s, stage in after["params"]["stages"].items()}
  assert all(set(np.unique(la)) <= {masks.KEPT, masks.PRUNED} for la in log_alphas.values())
  graph, _ = networks.channel_graph(tiny_config(), (8, 8, 3), 10)
  assert sorted(log_alphas) == sorted(g.name for g in graph.gates)
  cost = accounting.kept_fractions(graph, accounting.deterministic_kept(log_alphas))
  assert 0.3 < cost["macs"] <= 0.4
  kernel = lambda state: state["params"]["stem"]["conv"]["kernel"]["value"]
  assert not np.array_equal(kernel(saved_state(base, "best")), kernel(after))
  assert history_line(masked)["train_loss"] == history_line(masked)["train_cross_entropy"]


def test_a_mask_of_a_runs_decided_gates_keeps_its_channels_on_the_baselines_weights(runs):
  tuned, decided = runs["tuned"], os.path.join(runs["root"], "decided")
  result = succeeded(runs, "mask_decided")
  assert "Mask decided:" in result.stderr and f"(the gates of {tuned}); fixed." in result.stderr
  assert f"Network weights from the last checkpoint of {runs['base']}" in result.stderr
  graph, _ = networks.channel_graph(tiny_config(), (8, 8, 3), 10)
  assert (masks.kept_by(decided, graph).keys() == masks.kept_by(tuned, graph).keys())
  for name, kept in masks.kept_by(tuned, graph).items():
    np.testing.assert_array_equal(masks.kept_by(decided, graph)[name], kept, err_msg=name)
  kernel = lambda state: state["params"]["stem"]["conv"]["kernel"]["value"]
  assert not np.array_equal(kernel(saved_state(tuned, "last")), kernel(saved_state(decided, "last")))


def test_export_of_a_finished_run(runs):
  """On one device, and on two (as two GPUs would be) with the same results."""
  succeeded(runs, "export")
  exported = os.path.join(runs["root"], "export", "export")
  metrics = json.load(open(os.path.join(exported, "export_metrics.json")))
  assert metrics["max_abs_logit_diff"] < 1e-4
  assert metrics["test_accuracy_compact"] == metrics["test_accuracy_gated"]
  tested = json.load(open(os.path.join(runs["tuned"], "test_metrics.json")))
  assert metrics["params_compact"] <= tested["params_kept"]
  assert os.path.exists(os.path.join(exported, "inference.jax_export"))
  info = json.load(open(os.path.join(exported, "inference.json")))
  assert info["dataset"] == "synthetic" and info["num_classes"] == 10
  assert info["input_shape"] == [8, 8, 3] and info["input_dtype"] == "uint8"
  assert len(info["mean"]) == len(info["std"]) == 3
  succeeded(runs, "export_on_two")
  two = json.load(open(os.path.join(runs["root"], "export_on_two", "export",
                                    "export_metrics.json")))
  assert {k: two[k] for k in metrics if k != "max_abs_logit_diff"} == {
      k: metrics[k] for k in metrics if k != "max_abs_logit_diff"}
  assert two["max_abs_logit_diff"] < 1e-4


def test_testing_on_two_devices_gives_the_one_device_result(runs):
  succeeded(runs, "test_on_two")
  one = json.load(open(os.path.join(runs["base"], "test_metrics.json")))
  two = json.load(open(os.path.join(runs["root"], "on_two", "test_metrics.json")))
  assert two.pop("test_loss") == pytest.approx(one.pop("test_loss"), rel=1e-5)
  assert two == one


def test_one_step_per_call_and_a_scan_of_steps_agree():
  """The CPU path (a step per call) and the accelerator path (a scan, padded steps skipped)."""
  config = tiny_config()
  run = train.setup(config)
  state = train.initial_state(run)
  train_steps = train.make_train_steps(train.bound_step(run), run.mesh, config.seed)
  images, labels = jnp.asarray(run.dataset.train_images), jnp.asarray(run.dataset.train_labels)
  first = batches.epoch_order(0, 0, len(images), config.batch_size)[:1]
  copy = lambda s: jax.tree.map(jnp.copy, s)  # train_steps donates its state.
  stepped, _ = train_steps(copy(state), images, labels, first, np.ones(1, bool))
  # Two slots, the second one padding: it must change nothing.
  scanned, metrics = train_steps(copy(state), images, labels, np.concatenate([first, first]),
                                 np.array([True, False]))
  assert int(scanned.step) == int(stepped.step) == 1
  assert float(metrics["loss"][1]) == 0.0
  # A conv bias feeds a BatchNorm, so its true gradient is 0 and Adam follows
  # rounding noise that differs between two compiled programs: skip those.
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(scanned)[0],
                          jax.tree.leaves(stepped)):
    if "['conv']['bias']" not in jax.tree_util.keystr(path):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  assert batches.steps_per_call(0, 14) == 1  # CPU
  assert batches.steps_per_call(100, 14) == 14
  assert batches.steps_per_call(100, 351) == 88  # 4 calls, 1 padded


def test_training_without_tensorflow_writes_tensorboard_events_and_reports(runs):
  """The event files need no TensorFlow. Training metrics reach them every
  `log_every_steps` steps and at each epoch's end (here 6 > 14 / 3), as window
  means whose mean history.jsonl keeps. The console gets one line per phase and
  per epoch besides those windows, and no histogram."""
  workdir = os.path.join(runs["root"], "without_tensorflow")
  result = succeeded(runs, "without_tensorflow")
  for phase in ("Data: synthetic from synthetic", "Network: ResNet-8 at width 0.25, gated",
                "compiling the training step", "Compiled and ran the first training call",
                "epoch 1/1: train accuracy"):
    assert result.stderr.count(phase) == 1, (phase, result.stderr[-3000:])
  assert re.search(r"epoch 1/1: .*val accuracy .*gates open .*MACs kept .*L0 term", result.stderr)
  assert "log_alpha" not in result.stderr
  events = [e for e in read_events(workdir) if e.summary.value]
  losses = {e.step: v.simple_value for e in events for v in e.summary.value
            if v.tag == "train/loss"}
  assert sorted(losses) == [6, 12, 14]
  window_means = [losses[6]] * 6 + [losses[12]] * 6 + [losses[14]] * 2  # weighted by steps
  assert history_line(workdir)["train_loss"] == pytest.approx(np.mean(window_means), rel=1e-4)
  tags = {v.tag for e in events for v in e.summary.value}
  # A gated layer's histogram is named as --mode=test's table names the layer.
  assert {"val/accuracy", "gates/open", "gates/macs_kept", "log_alpha/stage1/block1/conv1",
          "log_alpha/stage3/block1/conv1", "_hparams_/experiment"} <= tags


def test_compiled_steps_are_kept_for_the_next_run_with_no_warning(tmp_path):
  # The user's default cache, capped in size: JAX needs filelock for the cap, and without it
  # warns at every compile and keeps nothing (the install must bring it).
  result = run_main("--config=configs/gated.py", *tiny_flags(num_epochs=1),
                    f"--workdir={tmp_path / 'run'}",
                    env={"JAX_COMPILATION_CACHE_DIR": None, "XDG_CACHE_HOME": str(tmp_path)})
  assert result.returncode == 0, result.stderr[-3000:]
  cache = tmp_path / "l0jax" / "jax"
  assert [n for n in os.listdir(cache) if n.startswith("jit_train_steps-")]
  assert "Warning" not in result.stderr, result.stderr[-3000:]


def test_the_compilation_cache_is_the_users_unless_jax_is_told_another(monkeypatch):
  kept = {name: getattr(jax.config, name) for name in ("jax_compilation_cache_dir",
                                                       "jax_compilation_cache_max_size")}
  try:
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/elsewhere")
    cli.use_compilation_cache(None)  # JAX reads the variable itself.
    assert {name: getattr(jax.config, name) for name in kept} == kept
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    cli.use_compilation_cache(None)
    assert jax.config.jax_compilation_cache_dir == cli.COMPILATION_CACHE
    assert jax.config.jax_compilation_cache_max_size == cli.COMPILATION_CACHE_BYTES
    cli.use_compilation_cache("")
    assert jax.config.jax_compilation_cache_dir is None
  finally:
    for name, value in kept.items():
      jax.config.update(name, value)
