"""Which channels of every node's output a gated network keeps at test time, and their gates.

The compact export keeps these channels alone (`export`), and a training step
at fixed gates computes them alone (`compact_training`). A gated layer keeps
the channels whose test-time gate is > 0 (a coupled group's shared gate
controls every member's, and the adds'); an ungated one all of them, or none
where the accounting counts it removed (all its readers closed); pools pass
their inputs' kept channels on; a shortcut keeps its input's and the zero
channels that line up with kept channels of the add that reads it.
"""

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from l0jax import accounting, gates, graphs


class KeptChannels(NamedTuple):
  """By node name (and `graphs.INPUT`): the kept output channels, as indices into the full
  output, and the test-time gate of every full output channel (1 where none scales it)."""

  indices: dict[str, np.ndarray]
  scale: dict[str, np.ndarray]

  def read(self, node: graphs.Node) -> tuple[np.ndarray, np.ndarray]:
    """The kept channels of `node`'s concatenated inputs, and the scale of all of them."""
    offsets = np.cumsum([0] + [self.scale[name].size for name in node.inputs])
    return (np.concatenate([self.indices[name] + o for name, o in zip(node.inputs, offsets)]),
            np.concatenate([self.scale[name] for name in node.inputs]))

  def pad_sides(self, pad: graphs.Pad) -> tuple[int, int]:
    """How many of a shortcut's zero channels before and after its input it keeps."""
    kept, channels = self.indices[pad.name], self.scale[pad.name].size
    return int(np.sum(kept < pad.before)), int(np.sum(kept >= channels - pad.after))


def kept_channels(graph: graphs.Graph, log_alphas: Mapping[str, Any]) -> KeptChannels:
  """What `graph`'s network keeps at the test-time gates of `log_alphas` (concrete arrays)."""
  test_gates = {name: np.asarray(gates.test_gate(la)) for name, la in log_alphas.items()}
  costs = {c.name: c for c in accounting.count(graph, accounting.deterministic_kept(log_alphas))}
  kept = KeptChannels({graphs.INPUT: np.arange(graph.in_channels)},
                      {graphs.INPUT: np.ones(graph.in_channels, np.float32)})
  for node in graph.nodes:
    inputs, input_scale = kept.read(node)
    if isinstance(node, graphs.Pool):
      indices, scale = inputs, input_scale
    else:
      scale = _scale(graph.segments(node.name), test_gates)
      indices = np.flatnonzero(scale > 0)
      if isinstance(node, graphs.Layer) and not (node.gate_names
                                                 or costs[node.name].kept_out):
        indices = indices[:0]
      elif isinstance(node, graphs.Pad):
        indices = _pad(graph, node, inputs, test_gates)
    kept.indices[node.name], kept.scale[node.name] = indices, scale
  return kept


def _scale(segments: Sequence[graphs.Segment],
           test_gates: Mapping[str, np.ndarray]) -> np.ndarray:
  """The test-time gate of each channel of a node's output: 1 where no gate scales it."""
  return np.concatenate([np.ones(s.channels, np.float32) if s.gate is None else test_gates[s.gate]
                         for s in segments])


def _pad(graph: graphs.Graph, pad: graphs.Pad, inputs: np.ndarray,
         test_gates: Mapping[str, np.ndarray]) -> np.ndarray:
  """A shortcut's kept channels: its input's, and the zero channels that line up with the kept
  channels of the add that reads it (all, if no add reads it)."""
  add = next((n for n in graph.nodes if isinstance(n, graphs.Add) and pad.name in n.inputs),
             None)
  channels = sum(s.channels for s in graph.segments(pad.name))
  zeros = np.ones(channels, bool)
  if add is not None:
    zeros = _scale(graph.segments(add.name), test_gates) > 0
  zeros[pad.before:channels - pad.after] = False
  return np.union1d(inputs + pad.before, np.flatnonzero(zeros))
