"""The values a trace follows through the jaxpr, in place of arrays (`tracing`).

A value is a `_Const`, computed from the module's variables alone, whose axes
carry runs of the variables they vary along (`_Run`), or an `_Act`, computed
from the images, whose channel axis is runs of graph nodes' channels (`_Seg`)
and whose spatial axes are windows on a grid (`_View`). `_Patches` and
`_Compare` are the halves of an im2col convolution and of a maximum.
"""

import dataclasses
from typing import Any

from l0jax import graphs


@dataclasses.dataclass(frozen=True)
class _Run:
  """Channels [start, stop) of each source (a variable's path and axis) along one axis."""

  sources: frozenset[tuple[graphs.Path, int]]
  start: int
  stop: int


@dataclasses.dataclass(frozen=True)
class _Const:
  """A value computed from the module's variables and constants alone, never the images.

  `labels[i]` says what varies along axis i: None if nothing does, else runs of
  sources; `opaque` that it varies in a way not followed; `value` is known
  where it is one number everywhere.
  """

  shape: tuple[int, ...]
  labels: tuple[tuple[_Run, ...] | None, ...]
  opaque: bool = False
  value: float | None = None


@dataclasses.dataclass(frozen=True)
class _Seg:
  """A run of an activation's channels: those of `node` (None: zeros a pad added), after
  `version` of the operations that follow it."""

  node: str | None
  version: int
  channels: int


@dataclasses.dataclass(frozen=True)
class _View:
  """A spatial axis as a window on the grid of the nodes it reads: at j, the max over the
  grid's pixels `offset + stride * j` for each offset."""

  offsets: tuple[int, ...]
  stride: int
  size: int


@dataclasses.dataclass(frozen=True)
class _Act:
  """A value computed from the images. `roles` names each axis: "N", "C", "H", "W", "1"
  (a unit axis), ("H", stride) the inner part of a split spatial axis, "F" a flattened map."""

  roles: tuple[Any, ...]
  segs: tuple[_Seg, ...]
  hw: int  # the side of the grid `views` sample
  views: tuple[_View, _View]  # H, W
  fill: float | None = None  # what padded grid positions hold, if any are padded
  divisor: int = 1  # a sum over pixels, waiting for its division by their number

  @property
  def channels(self) -> int:
    return sum(s.channels for s in self.segs)

  def identity(self) -> bool:
    return all(v == _View((0,), 1, self.hw) for v in self.views)


@dataclasses.dataclass(frozen=True)
class _Patches:
  """An im2col matrix: the channels of `base` at each tap (dy, dx) of a stride-1 window,
  concatenated in `taps`' order, zero where a tap falls off the map; `size` pixels a side."""

  base: _Act
  taps: tuple[tuple[int, int], ...]
  size: int


@dataclasses.dataclass(frozen=True)
class _Compare:
  """`a >= b` (or `>`) of two activations: half of a `where(a >= b, a, b)` maximum."""

  a: _Act
  b: _Act
