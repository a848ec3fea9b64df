"""A node's output channels as runs (`Segment`s): who made them and which gate scales them.

The channel graph (`graphs.Graph`) derives every node's segments from its
inputs', checking as it goes what a residual add may tie: channel by
channel, the same gate's same channel, or none. The layers whose channels an
add ties share their gate, as a coupled group (`coupling`).
"""

from typing import Mapping, NamedTuple, Sequence

from l0jax.errors import GraphError


class Segment(NamedTuple):
  """A run of channels of a node's output: who made them and which gate scales them."""

  producers: tuple[str, ...]  # layers (or INPUT); several when an Add summed them; none: zeros
  gate: str | None  # gated segments are whole gates
  channels: int


class _Channel(NamedTuple):
  """One channel of a node's output, as an Add lines its inputs up."""

  producers: tuple[str, ...]
  gate: str | None
  index: int  # its channel of `gate`; 0 when ungated


def _channels(segments: Sequence[Segment]) -> list[_Channel]:
  return [_Channel(s.producers, s.gate, i if s.gate else 0)
          for s in segments for i in range(s.channels)]


def _runs(channels: Sequence[_Channel]) -> tuple[Segment, ...]:
  """Channels in runs: one per gate's channels, per stretch of ungated ones, per stretch of
  zeros."""
  out: list[Segment] = []
  for c in channels:
    last = out[-1] if out else None
    if last and last.gate == c.gate and bool(last.producers) == bool(c.producers) and (
        c.gate is None or c.index == last.channels):
      out[-1] = Segment(tuple(dict.fromkeys(last.producers + c.producers)), c.gate,
                        last.channels + 1)
    else:
      out.append(Segment(c.producers, c.gate, 1))
  return tuple(out)


def layer_segments(name: str, names: Sequence[str], c_out: int,
                   gate_sizes: Mapping[str, int]) -> tuple[Segment, ...]:
  """The output of the layer `name`, gated by the gates `names` in order: one segment per
  gate (each a run of its channels), or one ungated."""
  if not names:
    return (Segment((name,), None, c_out),)
  for gate in names:
    if gate not in gate_sizes:
      raise GraphError(f"{name}: its gate {gate!r} is not one of the graph's")
  if len(set(names)) != len(names):
    raise GraphError(f"{name}: names a gate twice in {tuple(names)}")
  if (total := sum(gate_sizes[g] for g in names)) != c_out:
    stated = names[0] if len(names) == 1 else tuple(names)
    raise GraphError(f"{name}: its gate {stated!r} has {total} channels, the layer c_out={c_out}")
  return tuple(Segment((name,), g, gate_sizes[g]) for g in names)


def add_segments(name: str, inputs: Sequence[Sequence[Segment]]) -> tuple[Segment, ...]:
  """An add's output: channel by channel, its inputs' channels must be one gate's same channel,
  or all ungated (a pad's zeros go with either)."""
  out = []
  for j, column in enumerate(zip(*map(_channels, inputs))):
    real = [c for c in column if c.producers]
    if len({(c.gate, c.index) for c in real}) > 1:
      show = lambda c: f"channel {c.index} of gate {c.gate!r}" if c.gate else "an ungated one"
      raise GraphError(f"{name}: adds {' to '.join(dict.fromkeys(map(show, real)))} (its "
                       f"channel {j}); tied channels carry the same gate's same channel, or none")
    producers = tuple(dict.fromkeys(p for c in real for p in c.producers))
    out.append(real[0]._replace(producers=producers) if real else column[0])
  return _runs(out)


def pad_segments(segments: Sequence[Segment], before: int, after: int) -> tuple[Segment, ...]:
  """A `Pad`'s output: `segments` between `before` and `after` zero channels, which tie nothing."""
  zeros = lambda n: [_Channel((), None, 0)] * n
  return _runs(zeros(before) + _channels(segments) + zeros(after))


def tie(groups: list[set[str]], layers: set[str]) -> list[set[str]]:
  """`groups` with those that share a layer with `layers` joined into one."""
  joined = layers.union(*(g for g in groups if g & layers))
  return [g for g in groups if not g & layers] + [joined]

