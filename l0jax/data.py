"""Image classification data as host uint8 arrays, and the on-device augmentation.

A fixed 10% of the official training split validates; every split is
normalised by the per-channel mean and std of the training images. Sources
are tried in the order a user expects: the official files in
`config.data_dir`, Debian's Fashion-MNIST folder, then TFDS. TFDS is imported
only when it is needed, so that `import l0jax.data` never pulls in
TensorFlow (accelerator machines run without it).
"""

import codecs
import contextlib
import dataclasses
import gzip
import hashlib
import io
import math
import os
import pathlib
import pickle
import socket
import tarfile
import threading
import urllib.parse
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from l0jax.config import DATASETS, VAL_SPLITS
from l0jax.errors import UserError

# Installed by Debian's `dataset-fashion-mnist`: the four official IDX files, gzipped.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# The validation split is a fixed part of the official training set, whatever
# config.seed is. `val_split="hash"` chooses it by each example's content (see
# `content_order`); "seeded", the split of runs made before it, by a permutation
# of the file order drawn with SPLIT_SEED, which differs between sources.
SPLIT_SEED = 0
VAL_FRACTION = 0.1
SYNTHETIC_SEED = 0
SYNTHETIC_NUM_CLASSES = 10
# The PyTorch original's augmentation: crop area as a fraction of the image, and w/h ratio.
CROP_AREA = (0.8, 1.0)
CROP_RATIO = (0.9, 1.1)

_TFDS_CHUNK = 5000  # examples per tf.data batch when copying a split out of TFDS
_PROBE_TIMEOUT_S = 3.0
_CIFAR_PIXELS = 3 * 32 * 32
# What a corrupt, truncated or foreign file raises while we unpack or parse it.
_LOW_LEVEL_ERRORS = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError,
                     AttributeError, pickle.UnpicklingError, tarfile.TarError, zlib.error)

Split = tuple[np.ndarray, np.ndarray]  # images uint8 [N, H, W, C], labels int32 [N]
Blob = tuple[bytes, str]  # a file's contents, and where it came from for messages


class DataError(UserError):
  """The requested data cannot be found or read."""


class _ForbiddenPickle(pickle.UnpicklingError):
  """A pickle that asks for something the official files never hold: it could run code."""


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


# --- Parsing the official file formats --------------------------------------


@contextlib.contextmanager
def _reading(where: str):
  """Turns what a damaged file raises into a DataError that names the file."""
  try:
    yield
  except _ForbiddenPickle as e:
    raise DataError(f"Refused {where}: {e}. Only what the official CIFAR files hold is "
                    "unpickled (dicts, lists, bytes, numbers, uint8 arrays), so that a data file "
                    "cannot run code") from e
  except _LOW_LEVEL_ERRORS as e:
    raise DataError(f"Cannot read {where}: corrupt, truncated or not the official format "
                    f"({type(e).__name__}: {_one_line(e)})") from e


def _one_line(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return lines[0][:300] if lines else ""


def _chw_to_hwc(rows: np.ndarray) -> np.ndarray:
  return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _uint8_dtype(*args) -> np.dtype:
  dtype = np.dtype(*args)
  if dtype != np.uint8:
    raise _ForbiddenPickle(f"it holds a {dtype} array, where the official files hold uint8")
  return dtype


def _latin1_encode(text: str, encoding: str) -> bytes:
  # How Python 3 pickles bytes at protocol 2; any other codec is not a copy of bytes.
  if encoding != "latin1":
    raise _ForbiddenPickle(f"it encodes text as {encoding!r}")
  return codecs.encode(text, encoding)


# Every global the official batches (Python 2, numpy 1) and protocol-2 copies
# written by Python 3 and numpy 2 refer to: a uint8 array and bytes. Nothing
# else can be called, so loading a batch cannot run code.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's array unpickler, wherever numpy keeps it
_CIFAR_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _uint8_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _CifarUnpickler(pickle.Unpickler):
  """Dicts, lists, bytes, str, numbers and uint8 arrays; every other global is refused."""

  def find_class(self, module: str, name: str):
    allowed = _CIFAR_PICKLE_GLOBALS.get((module, name))
    if allowed is None:
      raise _ForbiddenPickle(f"it asks for {module}.{name}")
    return allowed


def _cifar_pickle(label_key: bytes) -> Callable[[bytes], Split]:
  """One batch of the python version: a pickled dict of CHW rows and labels."""

  def parse(blob: bytes) -> Split:
    # The official batches are Python 2 pickles: str is read as bytes.
    batch = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    if not isinstance(batch, dict):
      raise ValueError(f"it holds a {type(batch).__name__}, not a dict")
    rows = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], np.int32)
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != _CIFAR_PIXELS:
      raise ValueError(f"data is {rows.dtype} {rows.shape}, expected uint8 [N, {_CIFAR_PIXELS}]")
    if labels.shape != rows.shape[:1]:
      raise ValueError(f"{labels.shape[0]} labels for {rows.shape[0]} images")
    return _chw_to_hwc(rows), labels

  return parse


def _cifar_binary(label_bytes: int) -> Callable[[bytes], Split]:
  """One file of the binary version: records of label byte(s) + 3072 CHW pixels.

  CIFAR-100 records hold the coarse then the fine label; we keep the last
  label byte, which is the fine one there and the only one in CIFAR-10.
  """
  record = label_bytes + _CIFAR_PIXELS

  def parse(blob: bytes) -> Split:
    if not blob or len(blob) % record:
      raise ValueError(f"{len(blob)} bytes is not a whole number of {record}-byte records")
    records = np.frombuffer(blob, np.uint8).reshape(-1, record)
    return _chw_to_hwc(records[:, label_bytes:]), records[:, label_bytes - 1].astype(np.int32)

  return parse


def _cifar_split(parse_member: Callable[[bytes], Split]) -> Callable[[list[Blob]], Split]:
  """A split stored as several self-contained CIFAR batch files, concatenated."""

  def parse(files: list[Blob]) -> Split:
    parts = []
    for blob, where in files:
      with _reading(where):
        parts.append(parse_member(blob))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

  return parse


def _parse_idx(blob: bytes, ndim: int) -> np.ndarray:
  """An IDX array of unsigned bytes: magic 0x0000 08 <ndim>, big-endian int32 dims, data."""
  if len(blob) < 4 or blob[:3] != b"\x00\x00\x08" or blob[3] != ndim:
    raise ValueError(f"magic {blob[:4].hex()}, expected 000008{ndim:02x} (uint8, {ndim} dims)")
  header = 4 + 4 * ndim
  dims = tuple(int(d) for d in np.frombuffer(blob[4:header], ">i4"))
  if len(dims) != ndim or len(blob) != header + math.prod(dims):
    raise ValueError(f"{len(blob)} bytes does not match the header's shape {dims}")
  return np.frombuffer(blob, np.uint8, offset=header).reshape(dims)


def _idx_split(files: list[Blob]) -> Split:
  """A split stored as an IDX image file [N, H, W] and an IDX label file [N]."""
  (image_blob, image_where), (label_blob, label_where) = files
  with _reading(image_where):
    images = _parse_idx(image_blob, ndim=3)[..., None]
  with _reading(label_where):
    labels = _parse_idx(label_blob, ndim=1).astype(np.int32)
  if len(images) != len(labels):
    raise DataError(f"{image_where} holds {len(images)} images but {label_where} "
                    f"holds {len(labels)} labels")
  return images, labels


@dataclasses.dataclass(frozen=True)
class _Format:
  """One official way of storing a dataset on disk."""
  description: str
  folder: str | None  # the official extracted folder; None: the files sit in data_dir itself
  archive: str | None  # the official .tar.gz holding `folder`
  train: tuple[str, ...]
  test: tuple[str, ...]
  parse: Callable[[list[Blob]], Split]
  gz_members: bool = False  # each member may also be stored gzipped as NAME.gz

  @property
  def members(self) -> tuple[str, ...]:
    return self.train + self.test

  def expected(self) -> list[str]:
    if self.folder is None:
      return [", ".join(self.members) + (" (raw or .gz)" if self.gz_members else "")]
    return [self.archive, self.folder + "/"]


@dataclasses.dataclass(frozen=True)
class _Spec:
  image_shape: tuple[int, int, int]  # (height, width, channels)
  num_classes: int
  tfds_name: str
  download_url: str  # what TFDS downloads from; probed before trying
  formats: tuple[_Format, ...]

  def expected(self) -> str:
    names = [name for fmt in self.formats for name in fmt.expected()]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


_CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_SPECS = {
    "cifar10": _Spec(
        image_shape=(32, 32, 3), num_classes=10, tfds_name="cifar10",
        download_url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        formats=(
            _Format("CIFAR-10 python", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                    _CIFAR10_BATCHES, ("test_batch",), _cifar_split(_cifar_pickle(b"labels"))),
            _Format("CIFAR-10 binary", "cifar-10-batches-bin", "cifar-10-binary.tar.gz",
                    tuple(f"{b}.bin" for b in _CIFAR10_BATCHES), ("test_batch.bin",),
                    _cifar_split(_cifar_binary(1))),
        )),
    "cifar100": _Spec(
        image_shape=(32, 32, 3), num_classes=100, tfds_name="cifar100",
        download_url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        formats=(
            _Format("CIFAR-100 python", "cifar-100-python", "cifar-100-python.tar.gz",
                    ("train",), ("test",), _cifar_split(_cifar_pickle(b"fine_labels"))),
            _Format("CIFAR-100 binary", "cifar-100-binary", "cifar-100-binary.tar.gz",
                    ("train.bin",), ("test.bin",), _cifar_split(_cifar_binary(2))),
        )),
    "fashion_mnist": _Spec(
        image_shape=(28, 28, 1), num_classes=10, tfds_name="fashion_mnist",
        download_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        formats=(
            _Format("IDX files", None, None,
                    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
                    _idx_split, gz_members=True),
        )),
}


# --- Finding and reading local files ----------------------------------------


def _member_file(folder: pathlib.Path, member: str, gz_ok: bool) -> pathlib.Path | None:
  for path in (folder / member, folder / f"{member}.gz") if gz_ok else (folder / member,):
    if path.is_file():
      return path
  return None


def _read_folder(folder: pathlib.Path, fmt: _Format) -> dict[str, Blob]:
  paths = {m: _member_file(folder, m, fmt.gz_members) for m in fmt.members}
  missing = [m for m, path in paths.items() if path is None]
  if missing:
    raise DataError(f"{folder} holds part of the {fmt.description} files but lacks "
                    f"{', '.join(missing)}")
  blobs = {}
  for member, path in paths.items():
    with _reading(str(path)):
      blob = path.read_bytes()
      blobs[member] = (gzip.decompress(blob) if path.suffix == ".gz" else blob, str(path))
  return blobs


def _read_archive(path: pathlib.Path, fmt: _Format) -> dict[str, Blob]:
  """The members we need from an official .tar.gz, in one pass over the stream."""
  wanted = {f"{fmt.folder}/{m}": m for m in fmt.members}
  blobs = {}
  with _reading(str(path)), tarfile.open(path, "r:gz") as tar:
    for info in tar:
      member = wanted.get(os.path.normpath(info.name))
      if member is not None and info.isfile():
        blobs[member] = (tar.extractfile(info).read(), f"{info.name} in {path}")
  missing = [name for name, m in wanted.items() if m not in blobs]
  if missing:
    raise DataError(f"{path} is truncated or not the official archive: it lacks "
                    f"{', '.join(missing)}")
  return blobs


def _find_files(fmt: _Format,
                data_dir: pathlib.Path) -> tuple[dict[str, Blob], pathlib.Path] | None:
  """The members of `fmt` from its extracted folder (in data_dir, or data_dir itself) or archive."""
  for folder in [data_dir / fmt.folder, data_dir] if fmt.folder else [data_dir]:
    if folder.is_dir() and (folder.name == fmt.folder or any(
        _member_file(folder, m, fmt.gz_members) for m in fmt.members)):
      return _read_folder(folder, fmt), folder
  if fmt.archive and (data_dir / fmt.archive).is_file():
    return _read_archive(data_dir / fmt.archive, fmt), data_dir / fmt.archive
  return None


def _load_local(spec: _Spec, data_dir: pathlib.Path) -> tuple[Split, Split, str] | None:
  """The first of the dataset's official formats found in data_dir."""
  for fmt in spec.formats:
    found = _find_files(fmt, data_dir)
    if found is not None:
      blobs, where = found
      train = fmt.parse([blobs[m] for m in fmt.train])
      test = fmt.parse([blobs[m] for m in fmt.test])
      return train, test, f"{where} ({fmt.description})"
  return None


# --- TFDS -------------------------------------------------------------------


class _Unreachable(Exception):
  """A download's host did not answer; the message is the host."""


def _can_download(url: str) -> bool:
  """Whether `url`'s host accepts a connection within a few seconds.

  The probe runs in a thread because name resolution ignores socket timeouts.
  """
  parts = urllib.parse.urlsplit(url)
  port = parts.port or (443 if parts.scheme == "https" else 80)
  reachable = []

  def probe():
    try:
      socket.create_connection((parts.hostname, port), timeout=_PROBE_TIMEOUT_S).close()
      reachable.append(True)
    except OSError:
      pass

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(_PROBE_TIMEOUT_S)
  return bool(reachable)


def _download_and_prepare(builder, url: str) -> None:
  """`builder.download_and_prepare()`, abandoned if it is still running while `url` is unreachable.

  The download starts at once, and finishes at once when it has nothing to
  fetch (as under `tfds.testing.mock_data`). Only one still running after a
  few seconds is checked on, so that an offline machine fails in seconds
  instead of waiting on a download that cannot succeed.
  """
  done, failed = threading.Event(), []

  def prepare():
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except  # Raised again below.
      failed.append(e)
    finally:
      done.set()

  threading.Thread(target=prepare, daemon=True).start()
  if not done.wait(_PROBE_TIMEOUT_S) and not _can_download(url):
    raise _Unreachable(urllib.parse.urlsplit(url).hostname)
  done.wait()
  if failed:
    raise failed[0]


def _ways_to_provide(name: str, spec: _Spec) -> str:
  ways = ("Provide it by: TFDS with network access (pip install -r requirements-tfds.txt); "
          f"--config.data_dir=<a folder with {spec.expected()}>")
  if name == "fashion_mnist":
    return ways + "; apt-get install dataset-fashion-mnist."
  return (ways + ". Offline, train on Fashion-MNIST from Debian's package instead "
          "(apt-get install dataset-fashion-mnist): --config.dataset=fashion_mnist, as the quick "
          "start does: python -m l0jax.quickstart --workdir=runs/quickstart.")


def _load_tfds(name: str, spec: _Spec, data_dir: str) -> tuple[Split, Split, str]:
  """Train and test from a prepared TFDS copy, or a fresh download when the host answers."""
  problem = f"No {name} data: "
  if data_dir:
    problem = f"No {name} data in {data_dir}: none of {spec.expected()} there; "
  ways = _ways_to_provide(name, spec)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DataError(f"{problem}tensorflow_datasets is not installed. {ways}") from None
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir or None)
  try:
    if not builder.is_prepared():
      _download_and_prepare(builder, spec.download_url)
    splits = []
    for split in ("train", "test"):
      # Not batch_size=-1: that batches by the size recorded in the metadata,
      # or sys.maxsize without it (tfds.testing.mock_data), which aborts the process.
      ds = builder.as_dataset(split=split, as_supervised=True, batch_size=_TFDS_CHUNK)
      images, labels = zip(*tfds.as_numpy(ds))
      splits.append((np.concatenate(images), np.concatenate(labels).astype(np.int32)))
  except _Unreachable as e:
    raise DataError(f"{problem}no prepared TFDS copy ({builder.data_dir}) and TFDS cannot "
                    f"download it ({e} is unreachable). {ways}") from None
  except Exception as e:  # TFDS and tf.data raise all sorts; the user needs one line.
    raise DataError(f"{problem}TFDS failed to load it from {builder.data_dir} "
                    f"({type(e).__name__}: {_one_line(e)}). {ways}") from e
  return splits[0], splits[1], f"TFDS {spec.tfds_name} in {builder.data_dir}"


# --- Synthetic data ---------------------------------------------------------


def _synthetic(image_size: int, num_train: int) -> tuple[Split, Split]:
  """Noisy copies of 10 random class prototypes: easy to learn, for smoke runs.

  Prototypes are 4x4 random colour blocks scaled up, so that they survive the
  crop augmentation.
  """
  rng = np.random.default_rng(SYNTHETIC_SEED)
  blocks = rng.uniform(0, 255, (SYNTHETIC_NUM_CLASSES, 4, 4, 3)).astype(np.float32)
  rows = np.arange(image_size) * 4 // image_size
  prototypes = blocks[:, rows][:, :, rows]

  def draw(n: int) -> Split:
    labels = rng.integers(0, SYNTHETIC_NUM_CLASSES, n).astype(np.int32)
    noise = rng.standard_normal((n, image_size, image_size, 3), np.float32) * 48
    return np.clip(np.rint(prototypes[labels] + noise), 0, 255).astype(np.uint8), labels

  return draw(num_train), draw(num_train // 4)


# --- Putting it together ----------------------------------------------------


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
    return (size, size, 3), SYNTHETIC_NUM_CLASSES
  spec = _SPECS[config.dataset]
  return spec.image_shape, spec.num_classes


def load_dataset(config: ml_collections.ConfigDict) -> Dataset:
  """Loads `config.dataset` and splits off the fixed validation set.

  Sources, first match wins: the official files in `config.data_dir` (archive
  or extracted); with no data_dir, Debian's Fashion-MNIST folder; then TFDS
  (with `data_dir` as its data_dir). mean/std come from the whole training
  split, before `max_train_examples` subsets it, so that a smoke run
  normalises like a full run.
  """
  name = config.dataset
  if name not in DATASETS:
    raise DataError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
  if config.max_train_examples < 0:
    raise DataError(f"max_train_examples must be >= 0, got {config.max_train_examples}.")
  if config.val_split not in VAL_SPLITS:
    raise DataError(f"val_split={config.val_split!r} is not one of {', '.join(VAL_SPLITS)}.")
  if name == "synthetic":
    if config.synthetic_num_train < 10 or config.synthetic_image_size < 1:
      raise DataError("synthetic_num_train must be >= 10 and synthetic_image_size >= 1, got "
                      f"{config.synthetic_num_train} and {config.synthetic_image_size}.")
    train, test = _synthetic(config.synthetic_image_size, config.synthetic_num_train)
    source = f"synthetic ({SYNTHETIC_NUM_CLASSES} random prototypes + noise, seed {SYNTHETIC_SEED})"
    return _make_dataset(name, train, test, SYNTHETIC_NUM_CLASSES, config, source)

  spec = _SPECS[name]
  data_dir = config.data_dir
  loaded = None
  if data_dir:
    if not os.path.isdir(data_dir):
      problem = "is a file; give the folder that holds it" if os.path.exists(data_dir) else (
          "does not exist")
      raise DataError(f"data_dir {data_dir} {problem}.")
    loaded = _load_local(spec, pathlib.Path(data_dir))
  elif name == "fashion_mnist" and os.path.isdir(DEBIAN_FASHION_MNIST_DIR):
    loaded = _load_local(spec, pathlib.Path(DEBIAN_FASHION_MNIST_DIR))
  if loaded is None:
    loaded = _load_tfds(name, spec, data_dir)
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


# --- On device --------------------------------------------------------------


def normalize(images: jax.Array, mean: jax.typing.ArrayLike, std: jax.typing.ArrayLike,
              dtype: jax.typing.DTypeLike = jnp.float32) -> jax.Array:
  """uint8 pixels -> (x - mean) / std per channel, in float32 and then cast once to `dtype`."""
  x = images.astype(jnp.float32)
  return ((x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)).astype(dtype)


def _random_box(key: jax.Array, height: int, width: int) -> tuple[jax.Array, ...]:
  """top, left, h, w of a crop as torchvision's RandomResizedCrop samples it, but clipped.

  Where torchvision retries a box that does not fit, we shrink it to the image:
  the area scale then stays within CROP_AREA and the ratio within CROP_RATIO,
  and no sampling point ever falls outside the image. Boxes are continuous
  (sub-pixel), not rounded to whole pixels.
  """
  k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
  area = jax.random.uniform(k_area, (), jnp.float32, *CROP_AREA) * height * width
  log_ratio = jax.random.uniform(k_ratio, (), jnp.float32, *np.log(CROP_RATIO))
  h = jnp.minimum(jnp.sqrt(area * jnp.exp(-log_ratio)), height)
  w = jnp.minimum(jnp.sqrt(area * jnp.exp(log_ratio)), width)
  top = jax.random.uniform(k_top, (), jnp.float32) * (height - h)
  left = jax.random.uniform(k_left, (), jnp.float32) * (width - w)
  return top, left, h, w


def _resized_crop(image: jax.Array, top: jax.Array, left: jax.Array, h: jax.Array,
                  w: jax.Array) -> jax.Array:
  """Bilinearly resamples the box [top, top+h) x [left, left+w) of [H, W, C] `image` to H x W.

  Half-pixel centres as in torchvision; done in float32 so that bfloat16
  weights cannot push values outside the input's range.
  """
  height, width = image.shape[:2]
  scale = jnp.stack([height / h, width / w])
  out = jax.image.scale_and_translate(
      image.astype(jnp.float32), image.shape, (0, 1), scale, -jnp.stack([top, left]) * scale,
      method="linear", antialias=False)
  return out.astype(image.dtype)


def augment(key: jax.Array, images: jax.Array) -> jax.Array:
  """The PyTorch original's training augmentation: a random flip and resized crop per example.

  Horizontal flip with p=0.5, then a random resized crop back to H x W with
  area scale in CROP_AREA and log-uniform aspect ratio in CROP_RATIO, bilinear
  (`_random_box` says how it differs from torchvision). [B, H, W, C] float ->
  same shape and dtype; all randomness comes from `key`.
  """
  def one(key: jax.Array, image: jax.Array) -> jax.Array:
    k_flip, k_box = jax.random.split(key)
    image = jnp.where(jax.random.bernoulli(k_flip), image[:, ::-1], image)
    return _resized_crop(image, *_random_box(k_box, *image.shape[:2]))

  return jax.vmap(one)(jax.random.split(key, images.shape[0]), images)
