"""The official files' formats: CIFAR's pickled and binary batches, IDX, each parsed strictly.

A damaged or foreign file becomes one `DataError` naming it (`reading`), and
the CIFAR pickles are read by an unpickler that can call nothing but what the
official batches hold, so that a data file cannot run code.
"""

import codecs
import contextlib
import dataclasses
import io
import math
import pickle
import tarfile
import zlib
from collections.abc import Callable

import numpy as np

from l0jax.errors import UserError, one_line

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


@contextlib.contextmanager
def reading(where: str):
  """Turns what a damaged file raises into a DataError that names the file."""
  try:
    yield
  except _ForbiddenPickle as e:
    raise DataError(f"Refused {where}: {e}. Only what the official CIFAR files hold is "
                    "unpickled (dicts, lists, bytes, numbers, uint8 arrays), so that a data file "
                    "cannot run code") from e
  except _LOW_LEVEL_ERRORS as e:
    raise DataError(f"Cannot read {where}: corrupt, truncated or not the official format "
                    f"({one_line(e, 300)})") from e


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
      with reading(where):
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
  with reading(image_where):
    images = _parse_idx(image_blob, ndim=3)[..., None]
  with reading(label_where):
    labels = _parse_idx(label_blob, ndim=1).astype(np.int32)
  if len(images) != len(labels):
    raise DataError(f"{image_where} holds {len(images)} images but {label_where} "
                    f"holds {len(labels)} labels")
  return images, labels


@dataclasses.dataclass(frozen=True)
class Format:
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
class Spec:
  image_shape: tuple[int, int, int]  # (height, width, channels)
  num_classes: int
  tfds_name: str
  download_url: str  # what TFDS downloads from; probed before trying
  formats: tuple[Format, ...]

  def expected(self) -> str:
    names = [name for fmt in self.formats for name in fmt.expected()]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


_CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
SPECS = {
    "cifar10": Spec(
        image_shape=(32, 32, 3), num_classes=10, tfds_name="cifar10",
        download_url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        formats=(
            Format("CIFAR-10 python", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                    _CIFAR10_BATCHES, ("test_batch",), _cifar_split(_cifar_pickle(b"labels"))),
            Format("CIFAR-10 binary", "cifar-10-batches-bin", "cifar-10-binary.tar.gz",
                    tuple(f"{b}.bin" for b in _CIFAR10_BATCHES), ("test_batch.bin",),
                    _cifar_split(_cifar_binary(1))),
        )),
    "cifar100": Spec(
        image_shape=(32, 32, 3), num_classes=100, tfds_name="cifar100",
        download_url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        formats=(
            Format("CIFAR-100 python", "cifar-100-python", "cifar-100-python.tar.gz",
                    ("train",), ("test",), _cifar_split(_cifar_pickle(b"fine_labels"))),
            Format("CIFAR-100 binary", "cifar-100-binary", "cifar-100-binary.tar.gz",
                    ("train.bin",), ("test.bin",), _cifar_split(_cifar_binary(2))),
        )),
    "fashion_mnist": Spec(
        image_shape=(28, 28, 1), num_classes=10, tfds_name="fashion_mnist",
        download_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        formats=(
            Format("IDX files", None, None,
                    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
                    _idx_split, gz_members=True),
        )),
}
