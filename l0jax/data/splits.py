"""A data set on the host: its official splits found, the fixed validation split taken off the
training split, every split checked, and the training split's per-channel statistics.

A fixed 10% of the official training split validates; every split is
normalised by the per-channel mean and std of the training images.
"""

import dataclasses
import hashlib
import math
import os
import pathlib

import ml_collections
import numpy as np

from l0jax.data import sources
from l0jax.data.formats import SPECS, DataError, Split

# The validation split is a fixed part of the official training set, whatever
# config.seed is. `val_split="hash"` chooses it by each example's content (see
# `content_order`); "seeded", the split of runs made before it, by a permutation
# of the file order drawn with SPLIT_SEED, which differs between sources.
SPLIT_SEED = 0
VAL_FRACTION = 0.1


@dataclasses.dataclass(frozen=True, eq=False)  # eq would compare arrays
class Dataset:
  """All three splits on the host, as the training loop puts them on device (uint8)."""
  name: str
  train_images: np.ndarray  # uint8 [N, H, W, C]
  train_labels: np.ndarray  # int32 [N]
  val_images: np.ndarray
  val_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  mean: np.ndarray  # float32 [C], of the training split in [0, 255] units
  std: np.ndarray  # float32 [C]
  source: str  # where the data was loaded from, for logs


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Exact per-channel mean and std from pixel histograms, without a float copy of the images."""
  values = np.arange(256, dtype=np.float64)
  means, stds = [], []
  for c in range(images.shape[-1]):
    counts = np.bincount(images[..., c].ravel(), minlength=256)
    mean = counts @ values / counts.sum()
    means.append(mean)
    stds.append(math.sqrt(counts @ (values - mean) ** 2 / counts.sum()))
  return np.asarray(means, np.float32), np.asarray(stds, np.float32)


def _check_split(images: np.ndarray, labels: np.ndarray, num_classes: int, where: str) -> None:
  if len(images) == 0 or images.dtype != np.uint8 or images.ndim != 4:
    raise DataError(f"{where} gave {images.dtype} images of shape {images.shape}, "
                    "expected uint8 [N, H, W, C]")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise DataError(f"{where} has labels in [{labels.min()}, {labels.max()}], "
                    f"expected [0, {num_classes})")


def image_shape_and_classes(config: ml_collections.ConfigDict
                            ) -> tuple[tuple[int, int, int], int]:
  """The (height, width, channels) of `config.dataset`'s images and its number of classes,
  known without loading it."""
  if config.dataset == "synthetic":
    size = config.synthetic_image_size
    return (size, size, 3), sources.SYNTHETIC_NUM_CLASSES
  spec = SPECS[config.dataset]
  return spec.image_shape, spec.num_classes


def load_dataset(config: ml_collections.ConfigDict) -> Dataset:
  """Loads `config.dataset` and splits off the fixed validation set; `run_config.validate` has
  checked the config's values, and this checks the files.

  Sources, first match wins: the official files in `config.data_dir` (archive
  or extracted); with no data_dir, Debian's Fashion-MNIST folder; then TFDS
  (with `data_dir` as its data_dir). mean/std come from the whole training
  split, before `max_train_examples` subsets it, so that a smoke run
  normalises like a full run.
  """
  name = config.dataset
  if name == "synthetic":
    train, test = sources.synthetic(config.synthetic_image_size, config.synthetic_num_train)
    source = (f"synthetic ({sources.SYNTHETIC_NUM_CLASSES} random prototypes + noise, "
              f"seed {sources.SYNTHETIC_SEED})")
    return _make_dataset(name, train, test, sources.SYNTHETIC_NUM_CLASSES, config, source)

  spec = SPECS[name]
  data_dir = config.data_dir
  loaded = None
  if data_dir:
    if not os.path.isdir(data_dir):
      problem = "is a file; give the folder that holds it" if os.path.exists(data_dir) else (
          "does not exist")
      raise DataError(f"data_dir {data_dir} {problem}.")
    loaded = sources.load_local(spec, pathlib.Path(data_dir))
  elif name == "fashion_mnist" and os.path.isdir(sources.DEBIAN_FASHION_MNIST_DIR):
    loaded = sources.load_local(spec, pathlib.Path(sources.DEBIAN_FASHION_MNIST_DIR))
  if loaded is None:
    loaded = sources.load_tfds(name, spec, data_dir)
  train, test, source = loaded
  if train[0].shape[1:] != spec.image_shape:
    raise DataError(f"The training split of {source} has images of shape {train[0].shape[1:]}, "
                    f"not {name}'s {spec.image_shape}.")
  return _make_dataset(name, train, test, spec.num_classes, config, source)


def content_order(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """The examples sorted by a 128-bit BLAKE2b hash of each one's int32 label and HWC pixels.

  The order depends on the examples only, not on the order a source stores
  them in (TFDS shuffles the official files), so every source of a data set
  gives the same split, the same training order and the same statistics.
  Only examples identical in label and pixels tie, and those are interchangeable.
  """
  digests = b"".join(
      hashlib.blake2b(label.astype("<i4").tobytes() + image.tobytes(), digest_size=16).digest()
      for image, label in zip(images, labels))
  keys = np.frombuffer(digests, ">u8").reshape(-1, 2)
  return np.lexsort((keys[:, 1], keys[:, 0]))


def _make_dataset(name: str, train: Split, test: Split, num_classes: int,
                  config: ml_collections.ConfigDict, source: str) -> Dataset:
  for split, what in ((train, "training"), (test, "test")):
    _check_split(*split, num_classes, f"The {what} split of {source}")
  if test[0].shape[1:] != train[0].shape[1:]:
    raise DataError(f"The test split of {source} has images of shape {test[0].shape[1:]}, the "
                    f"training split {train[0].shape[1:]}: they must be the same.")
  images, labels = train
  if config.val_split == "hash":
    order = content_order(images, labels)
  else:  # RandomState's stream is frozen by NumPy's compatibility policy.
    order = np.random.RandomState(SPLIT_SEED).permutation(len(labels))
  num_val = round(len(labels) * VAL_FRACTION)
  val, kept = order[:num_val], order[num_val:]
  train_images, train_labels = images[kept], labels[kept]
  # Exact, and independent of the order: integer pixel counts, then float64.
  mean, std = _channel_stats(train_images)
  if config.max_train_examples:
    train_images = train_images[:config.max_train_examples]
    train_labels = train_labels[:config.max_train_examples]
  return Dataset(
      name=name,
      train_images=train_images, train_labels=train_labels,
      val_images=images[val], val_labels=labels[val],
      test_images=test[0], test_labels=test[1],
      num_classes=num_classes, mean=mean, std=std, source=source)
