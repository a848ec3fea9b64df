"""How a trace refuses a program: one `GraphError` naming the operation and the line of the
user's code it came from, past JAX's and Flax's own frames (`tracing`)."""

import os

from flax import nnx
from jax._src import source_info_util  # An equation's user frames; JAX exports no other way.

from l0jax.errors import GraphError

_FLAX = os.path.dirname(nnx.__file__).rsplit(os.sep, 1)[0]


def _where(eqn, outer: str) -> str:
  """The line of the user's code an equation came from, past JAX's and Flax's own frames."""
  frames = list(source_info_util.user_frames(eqn.source_info.traceback))
  frame = next((f for f in frames if not f.file_name.startswith(_FLAX)), None)
  if frame is None:
    return outer
  return f"{frame.file_name}:{frame.start_line} ({frame.function_name})"


def _refuse(eqn, where: str, why: str):
  what = "the output" if eqn is None else eqn.primitive.name
  raise GraphError(f"cannot trace {what} at {where}: {why}")
