"""Short sha256 of the programs main.py lowers (train step; inference forward), per variant.

Run from a checkout: `PYTHONPATH=. JAX_PLATFORMS=cpu python PATH/TO/check.py`. The same
hashes at two commits mean the benchmarks and sweeps measured at either measured the other.
"""
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from l0jax import config as config_lib, train

try:
  from l0jax.batches import epoch_order  # train.py's until issue 38 moved it
except ImportError:
  epoch_order = train.epoch_order


def digest(lowered) -> str:
  return hashlib.sha256(lowered.as_text(debug_info=False).encode()).hexdigest()[:16]


VARIANTS = [dict(use_gate=g, compute_dtype=d) for g in (True, False) for d in ("float32", "bfloat16")]
if "train_gates" in config_lib.base_config():  # Retraining with fixed gates, since 6387143.
  VARIANTS.append(dict(use_gate=True, compute_dtype="float32", train_gates=False, init_from="x"))

for variant in VARIANTS:
  c = config_lib.base_config()
  c.update(dataset="synthetic", synthetic_image_size=28, synthetic_num_train=256,
           width_multiplier=0.25, batch_size=64, steps_per_call=1, **variant)
  if "plan" in train.Run._fields:  # The run carries its config's gate plan, since issue 38.
    run = train.setup(c, config_lib.validate(c))
    tx, state = train.initial_state(run)
    steps = train.make_train_steps(run, tx)
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
