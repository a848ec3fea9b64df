"""Where a data set's two official splits come from: its files in a folder or archive, TFDS,
or synthetic prototypes.

TFDS is imported only when it is needed, so that `import l0jax.data` never
pulls in TensorFlow (accelerator machines run without it).
"""

import gzip
import os
import pathlib
import socket
import tarfile
import threading
import urllib.parse

import numpy as np

from l0jax.data.formats import Blob, DataError, Format, Spec, Split, reading
from l0jax.errors import one_line

# Installed by Debian's `dataset-fashion-mnist`: the four official IDX files, gzipped.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SYNTHETIC_SEED = 0
SYNTHETIC_NUM_CLASSES = 10

_TFDS_CHUNK = 5000  # examples per tf.data batch when copying a split out of TFDS
_PROBE_TIMEOUT_S = 3.0


def _member_file(folder: pathlib.Path, member: str, gz_ok: bool) -> pathlib.Path | None:
  for path in (folder / member, folder / f"{member}.gz") if gz_ok else (folder / member,):
    if path.is_file():
      return path
  return None


def _read_folder(folder: pathlib.Path, fmt: Format) -> dict[str, Blob]:
  paths = {m: _member_file(folder, m, fmt.gz_members) for m in fmt.members}
  missing = [m for m, path in paths.items() if path is None]
  if missing:
    raise DataError(f"{folder} holds part of the {fmt.description} files but lacks "
                    f"{', '.join(missing)}")
  blobs = {}
  for member, path in paths.items():
    with reading(str(path)):
      blob = path.read_bytes()
      blobs[member] = (gzip.decompress(blob) if path.suffix == ".gz" else blob, str(path))
  return blobs


def _read_archive(path: pathlib.Path, fmt: Format) -> dict[str, Blob]:
  """The members we need from an official .tar.gz, in one pass over the stream."""
  wanted = {f"{fmt.folder}/{m}": m for m in fmt.members}
  blobs = {}
  with reading(str(path)), tarfile.open(path, "r:gz") as tar:
    for info in tar:
      member = wanted.get(os.path.normpath(info.name))
      if member is not None and info.isfile():
        blobs[member] = (tar.extractfile(info).read(), f"{info.name} in {path}")
  missing = [name for name, m in wanted.items() if m not in blobs]
  if missing:
    raise DataError(f"{path} is truncated or not the official archive: it lacks "
                    f"{', '.join(missing)}")
  return blobs


def _find_files(fmt: Format,
                data_dir: pathlib.Path) -> tuple[dict[str, Blob], pathlib.Path] | None:
  """The members of `fmt` from its extracted folder (in data_dir, or data_dir itself) or archive."""
  for folder in [data_dir / fmt.folder, data_dir] if fmt.folder else [data_dir]:
    if folder.is_dir() and (folder.name == fmt.folder or any(
        _member_file(folder, m, fmt.gz_members) for m in fmt.members)):
      return _read_folder(folder, fmt), folder
  if fmt.archive and (data_dir / fmt.archive).is_file():
    return _read_archive(data_dir / fmt.archive, fmt), data_dir / fmt.archive
  return None


def load_local(spec: Spec, data_dir: pathlib.Path) -> tuple[Split, Split, str] | None:
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


def _ways_to_provide(name: str, spec: Spec) -> str:
  ways = ("Provide it by: TFDS with network access (pip install -r requirements-tfds.txt); "
          f"--config.data_dir=<a folder with {spec.expected()}>")
  if name == "fashion_mnist":
    return ways + "; apt-get install dataset-fashion-mnist."
  return (ways + ". Offline, train on Fashion-MNIST from Debian's package instead "
          "(apt-get install dataset-fashion-mnist): --config.dataset=fashion_mnist, as the quick "
          "start does: python -m l0jax.quickstart --workdir=runs/quickstart.")


def load_tfds(name: str, spec: Spec, data_dir: str) -> tuple[Split, Split, str]:
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
                    f"({one_line(e, 300)}). {ways}") from e
  return splits[0], splits[1], f"TFDS {spec.tfds_name} in {builder.data_dir}"


# --- Synthetic data ---------------------------------------------------------


def synthetic(image_size: int, num_train: int) -> tuple[Split, Split]:
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
