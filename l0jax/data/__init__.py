"""Image classification data as host uint8 arrays, and the on-device augmentation.

Sources are tried in the order a user expects: the official files in
`config.data_dir`, Debian's Fashion-MNIST folder, then TFDS. `formats` parses
the official files, `sources` finds a data set's splits, `splits` makes the
`Dataset` (validation split, statistics), `augmentation` runs on the device.
"""

from l0jax.data.augmentation import augment, normalize
from l0jax.data.formats import DataError
from l0jax.data.sources import DEBIAN_FASHION_MNIST_DIR
from l0jax.data.splits import VAL_FRACTION, Dataset, image_shape_and_classes, load_dataset

__all__ = ["DEBIAN_FASHION_MNIST_DIR", "VAL_FRACTION", "DataError", "Dataset", "augment",
           "image_shape_and_classes", "load_dataset", "normalize"]
