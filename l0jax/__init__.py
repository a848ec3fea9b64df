"""l0jax: structured pruning of convolutional networks with L0 (hard-concrete) gates.

The Python API (the README's "Python API" section; `examples/custom_cnn.py`
runs it on a CNN of its own):

- gate a network: `L0Gate` holds a layer's `LogAlpha`, `gate_channels` applies it; or
  `gate_network` puts them into an unmodified one (`l0jax.gating`);
- describe its channels: `trace_graph` reads its `Graph` from its program
  (`l0jax.tracing`), or state one of `Layer`, `Pool`, `Add`, `Pad` and `Gate`
  (`l0jax.graphs`'s docstring); a wrong graph raises `GraphError`;
  `channel_groups` gives the channels that residual adds tie (`l0jax.coupling`);
- `costs`, `format_table`, `penalty`, `save_export`, `load_export` (`l0jax.api`);
- the built-in networks, `GoogleNet`, `ResNet` and `VGG`, whose `channel_graph`s are
  traced and whose `stated_channel_graph`s are examples of graphs stated by hand.
"""

import importlib

# Where each name of the API lives. They are imported when first used, not by
# `import l0jax`: the command line reports a bad flag, and starts
# jax.distributed, before anything imports JAX.
_API = {
    "format_table": "l0jax.accounting",
    **dict.fromkeys(["ChannelGroup", "channel_groups"], "l0jax.coupling"),
    **dict.fromkeys(["costs", "load_export", "penalty", "save_export"], "l0jax.api"),
    **dict.fromkeys(["GraphError", "UserError"], "l0jax.errors"),
    **dict.fromkeys(["L0Gate", "LogAlpha", "gate_channels"], "l0jax.gates"),
    **dict.fromkeys(["GatedNetwork", "gate_network"], "l0jax.gating"),
    **dict.fromkeys(["INPUT", "Add", "Gate", "Graph", "Layer", "Pad", "Pool"], "l0jax.graphs"),
    "GoogleNet": "l0jax.googlenet",
    "trace_graph": "l0jax.tracing",
    "ResNet": "l0jax.resnet",
    "VGG": "l0jax.vgg",
}
__all__ = sorted(_API)


def __getattr__(name: str):
  if name not in _API:
    raise AttributeError(f"module 'l0jax' has no attribute {name!r}")
  return getattr(importlib.import_module(_API[name]), name)
