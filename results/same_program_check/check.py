"""Short sha256 of the programs main.py lowers (train step; inference forward), per variant.

Run from a checkout: `PYTHONPATH=. JAX_PLATFORMS=cpu python PATH/TO/check.py`. The same
hashes at two commits mean the benchmarks and sweeps measured at either measured the other.
"""
import functools
import hashlib
import importlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from l0jax import train

# run_config.py since issue 38's renames; config.py before.
config_lib = importlib.import_module("l0jax.run_config" if pathlib.Path(train.__file__).with_name(
    "run_config.py").exists() else "l0jax.config")

try:
  from l0jax.batches import epoch_order  # train.py's until issue 38 moved it
except ImportError:
  epoch_order = train.epoch_order


def digest(lowered) -> str:
  return hashlib.sha256(lowered.as_text(debug_info=False).encode()).hexdigest()[:16]


VARIANTS = [dict(use_gate=g, compute_dtype=d) for g in (True, False) for d in ("float32", "bfloat16")]
if "train_gates" in config_lib.base_config():  # Retraining with fixed gates, since 6387143.
  VARIANTS.append(dict(use_gate=True, compute_dtype="float32", train_gates=False, init_from="x"))
if "target_macs" in config_lib.base_config():  # Pruning to a budget, where the commit has it.
  VARIANTS.append(dict(use_gate=True, compute_dtype="float32", target_macs=0.25, num_epochs=10))

for variant in VARIANTS:
  c = config_lib.base_config()
  c.update(dataset="synthetic", synthetic_image_size=28, synthetic_num_train=256,
           width_multiplier=0.25, batch_size=64, steps_per_call=1, **variant)
  if "tx" in train.Run._fields:  # setup resolves the whole config, since issue 38's fourth part.
    from l0jax import pruning  # pylint: disable=import-outside-toplevel
    run = train.setup(c)
    state = train.initial_state(run)
    kept = pruning.computed_channels(run.network, state, c.compact_training) if (
        run.plan.fixed_from_start) else None
    steps = train.make_train_steps(functools.partial(train.bound_step(run), kept=kept), run.mesh,
                                   c.seed)
  elif "plan" in train.Run._fields:  # The run carries its config's gate plan, since issue 38.
    run = train.setup(c, config_lib.validate(c))
    tx, state = train.initial_state(run)
    kept = None
    if "compact_training" in c:  # train_and_evaluate's kept channels at fixed gates, where it has them.
      from l0jax import pruning  # pylint: disable=import-outside-toplevel
      fixed = getattr(run.plan, "fixed_from_start", getattr(run.plan, "gates_fixed", False))
      computed = getattr(pruning, "computed_channels", getattr(pruning, "fixed_kept", None))
      kept = computed(run.network, state, c.compact_training) if fixed else None
    steps = train.make_train_steps(run, tx, kept=kept)
  else:
    run = train.setup(c)
    tx, state = train.initial_state(run)
    steps = train.make_train_steps(run.network, tx, c, run.mesh)
  images, labels = jnp.asarray(run.dataset.train_images), jnp.asarray(run.dataset.train_labels)
  indices = epoch_order(0, 0, len(images), c.batch_size)[:1]
  name = " ".join(f"{k}={v}" for k, v in variant.items() if k != "init_from")
  print(f"train step  {name:60} {digest(steps.lower(state, images, labels, indices, np.ones(1, bool)))}")
  if variant["compute_dtype"] == "float32" and c.get("train_gates", True):
    forward = jax.jit(lambda p, b, x: run.network.apply(p, b, x, train=False)[0])
    x = jnp.zeros((64, 28, 28, 3), run.network.dtype)
    print(f"inference   {name:60} {digest(forward.lower(state.params, state.batch_stats, x))}")
