"""How an epoch's training examples are cut into steps, and the steps into compiled calls.

Everything is derived from (seed, epoch), so that a resumed run takes the
same batches as one that never stopped.
"""

import jax
import numpy as np

from l0jax.errors import UserError


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Training steps an epoch: whole batches only."""
  steps = num_examples // batch_size
  if steps == 0:
    raise UserError(f"batch_size={batch_size} is larger than the training split "
                    f"({num_examples} examples)")
  return steps


def steps_per_call(most: int, epoch_steps: int) -> int:
  """Training steps per compiled call: at most `most`, in equal calls an epoch.

  `most` is config.steps_per_call, whose 0 picks 1 on CPU, where XLA runs the
  training steps slower inside a loop than outside one, and 100 on
  accelerators, where fewer host round-trips pay. Calls of equal size leave at
  most one padded step per call (see `train.make_train_steps`).
  """
  n = most or (1 if jax.default_backend() == "cpu" else 100)
  return -(-epoch_steps // -(-epoch_steps // n))


def epoch_order(seed: int, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
  """The training examples of one epoch, as [steps_per_epoch, batch_size] indices."""
  steps = num_examples // batch_size
  order = np.random.default_rng((seed, epoch)).permutation(num_examples)
  return order[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)
