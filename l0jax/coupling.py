"""Channels that must be pruned together: the groups that residual adds tie (DepGraph's groups).

A layer's output channel that only layers read can be removed alone. An
`Add` sums its inputs channel by channel, so channel i of each is removed
with the others or not at all; a `Pad` shifts its input's channels by
`before` (its zero channels tie nothing); pools and concatenations pass
channels on. `channel_groups` joins tied channels across the whole graph: in
a ResNet, the stem's outputs with the block outputs of every stage they flow
into. A group that holds the input's channels cannot be pruned; any other
may be gated as one, its members sharing one gate (`gating.gate_network`'s
`gate_residual`, `graph`'s shared gates).
"""

from typing import NamedTuple

from l0jax import graphs

_Channel = tuple[str, int]  # (a layer or INPUT, one of its output channels)


class ChannelGroup(NamedTuple):
  """Channels removed together: channel j of each member's run is the group's channel j."""

  members: tuple[tuple[str, int, int], ...]  # (a layer or INPUT, first channel, end), in order

  @property
  def size(self) -> int:
    _, start, stop = self.members[0]
    return stop - start


def _origins(graph: graphs.Graph, union) -> None:
  """Follows every node's output channels back to the channels that make them, tying those
  that an add sums."""
  origin = {graphs.INPUT: [(graphs.INPUT, c) for c in range(graph.in_channels)]}
  for node in graph.nodes:
    read = [c for name in node.inputs for c in origin[name]]
    if isinstance(node, graphs.Layer):
      origin[node.name] = [(node.name, c) for c in range(node.c_out)]
    elif isinstance(node, graphs.Add):
      columns = zip(*(origin[name] for name in node.inputs))
      origin[node.name] = []
      for column in columns:
        tied = [c for c in column if c is not None]
        for c in tied[1:]:
          union(tied[0], c)
        origin[node.name].append(tied[0] if tied else None)
    elif isinstance(node, graphs.Pad):
      origin[node.name] = [None] * node.before + read + [None] * node.after
    else:
      origin[node.name] = read


def channel_groups(graph: graphs.Graph) -> tuple[ChannelGroup, ...]:
  """Every output channel of the input and of each layer, in groups of channels tied by adds.

  A layer whose outputs no add ties is one group of one member; groups come in
  the order of their first member's node, each member's runs as long as they
  stay parallel.
  """
  parent: dict[_Channel, _Channel] = {}

  def find(c: _Channel) -> _Channel:
    while parent.get(c, c) != c:
      c = parent[c]
    return c

  def union(a: _Channel, b: _Channel) -> None:
    a, b = find(a), find(b)
    if a != b:
      parent[max(a, b, key=order)] = min(a, b, key=order)

  producers = [graphs.INPUT] + [l.name for l in graph.layers]
  rank = {name: i for i, name in enumerate(producers)}
  order = lambda c: (rank[c[0]], c[1])
  _origins(graph, union)
  classes: dict[_Channel, list[_Channel]] = {}
  widths = {graphs.INPUT: graph.in_channels, **{l.name: l.c_out for l in graph.layers}}
  for name in producers:
    for c in range(widths[name]):
      classes.setdefault(find((name, c)), []).append((name, c))
  # Channels j and j + 1 of a group are neighbours when each member's are.
  groups: list[list[list[_Channel]]] = []
  for members in sorted(classes.values(), key=lambda m: order(m[0])):
    last = groups[-1][-1] if groups else None
    if last and [n for n, _ in last] == [n for n, _ in members] and all(
        c == d + 1 for (_, c), (_, d) in zip(members, last)):
      groups[-1].append(members)
    else:
      groups.append([members])
  return tuple(ChannelGroup(tuple((name, first, first + len(group)) for name, first in group[0]))
               for group in groups)
