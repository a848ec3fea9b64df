"""l0jax: structured pruning of convolutional networks with L0 (hard-concrete) gates."""
