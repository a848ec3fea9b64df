"""Tests for l0jax.data: every loader on tiny fixtures in the official formats, the
split, the error messages, and the augmentation."""

import dataclasses
import gzip
import os
import pickle
import tarfile
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, CreatesAFile, Program
from l0jax import data
from l0jax.data import augmentation, sources
from l0jax.run_config import base_config, validate
from l0jax.errors import UserError

BATCH = 20  # images per fixture batch file; CIFAR-10 fixtures hold 5 train batches


def _config(dataset, data_dir="", **overrides):
  config = base_config()
  config.dataset = dataset
  config.data_dir = str(data_dir)
  config.update(overrides)
  return config


def _images(n, seed, shape=(32, 32, 3)):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


def _labels(n, seed, num_classes=10):
  return np.random.default_rng(seed + 1000).integers(0, num_classes, n).astype(np.int32)


def _chw_rows(images):
  return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _tar_gz(folder, archive):
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(folder, arcname=folder.name)
  return archive


@dataclasses.dataclass
class Fixture:
  """The arrays a fixture was written from, to compare the loader's output against."""
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray


def _arrays(num_train, num_classes, shape=(32, 32, 3)):
  return Fixture(_images(num_train, 1, shape), _labels(num_train, 1, num_classes),
                 _images(BATCH, 2, shape), _labels(BATCH, 2, num_classes))


def write_cifar10_python(root):
  f = _arrays(5 * BATCH, 10)
  folder = root / "cifar-10-batches-py"
  folder.mkdir(parents=True)
  batches = [(f"data_batch_{i + 1}", slice(i * BATCH, (i + 1) * BATCH)) for i in range(5)]
  for name, images, labels in [(n, f.train_images[s], f.train_labels[s]) for n, s in batches] + [
      ("test_batch", f.test_images, f.test_labels)]:
    batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": _chw_rows(images),
             b"filenames": [b"x.png"] * len(labels)}
    (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
  (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": []}, protocol=2))
  return f, folder


def write_cifar10_binary(root):
  f = _arrays(5 * BATCH, 10)
  folder = root / "cifar-10-batches-bin"
  folder.mkdir(parents=True)

  def records(images, labels):
    return np.concatenate([labels[:, None].astype(np.uint8), _chw_rows(images)], axis=1).tobytes()

  for i in range(5):
    s = slice(i * BATCH, (i + 1) * BATCH)
    (folder / f"data_batch_{i + 1}.bin").write_bytes(records(f.train_images[s], f.train_labels[s]))
  (folder / "test_batch.bin").write_bytes(records(f.test_images, f.test_labels))
  return f, folder


def _write_cifar100(root, folder_name, suffix, encode):
  """The train and test files of a CIFAR-100 layout, each `encode(images, labels)` as bytes."""
  f = _arrays(3 * BATCH, 100)
  folder = root / folder_name
  folder.mkdir(parents=True)
  (folder / f"train{suffix}").write_bytes(encode(f.train_images, f.train_labels))
  (folder / f"test{suffix}").write_bytes(encode(f.test_images, f.test_labels))
  return f, folder


def write_cifar100_python(root):
  def pickled(images, labels):
    return pickle.dumps({b"data": _chw_rows(images), b"fine_labels": labels.tolist(),
                         b"coarse_labels": (labels // 5).tolist()}, protocol=2)
  return _write_cifar100(root, "cifar-100-python", "", pickled)


def write_cifar100_binary(root):
  def records(images, labels):
    labels = labels[:, None].astype(np.uint8)
    return np.concatenate([labels // 5, labels, _chw_rows(images)], axis=1).tobytes()
  return _write_cifar100(root, "cifar-100-binary", ".bin", records)


def _idx(array):
  header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
  return header + array.astype(np.uint8).tobytes()


def write_fashion_mnist(folder, gz):
  f = _arrays(5 * BATCH, 10, shape=(28, 28, 1))
  folder.mkdir(parents=True, exist_ok=True)
  _write_idx(folder, f, gz)
  return f, folder


def check_matches(ds, f, num_classes):
  """Pixel-exact: val + train are the fixture's training images, each with its own label."""
  n = len(f.train_labels)
  assert len(ds.val_labels) == round(n * data.VAL_FRACTION)
  assert len(ds.train_labels) + len(ds.val_labels) == n
  index = {img.tobytes(): i for i, img in enumerate(f.train_images)}
  for images, labels in [(ds.train_images, ds.train_labels), (ds.val_images, ds.val_labels)]:
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    found = [index[img.tobytes()] for img in images]
    np.testing.assert_array_equal(labels, f.train_labels[found])
  train_ids = {index[img.tobytes()] for img in ds.train_images}
  val_ids = {index[img.tobytes()] for img in ds.val_images}
  assert not train_ids & val_ids and len(train_ids | val_ids) == n
  np.testing.assert_array_equal(ds.test_images, f.test_images)
  np.testing.assert_array_equal(ds.test_labels, f.test_labels)
  assert ds.num_classes == num_classes
  axes = (0, 1, 2)
  np.testing.assert_allclose(ds.mean, ds.train_images.mean(axes, dtype=np.float64), rtol=1e-6)
  np.testing.assert_allclose(ds.std, ds.train_images.std(axes, dtype=np.float64), rtol=1e-6)
  assert ds.mean.dtype == ds.std.dtype == np.float32


CIFAR_WRITERS = {
    "cifar10_python": ("cifar10", write_cifar10_python, "cifar-10-python.tar.gz", 10),
    "cifar10_binary": ("cifar10", write_cifar10_binary, "cifar-10-binary.tar.gz", 10),
    "cifar100_python": ("cifar100", write_cifar100_python, "cifar-100-python.tar.gz", 100),
    "cifar100_binary": ("cifar100", write_cifar100_binary, "cifar-100-binary.tar.gz", 100),
}


@pytest.mark.parametrize("layout", ["parent", "folder", "archive"])
@pytest.mark.parametrize("fmt", list(CIFAR_WRITERS))
def test_cifar_formats(tmp_path, fmt, layout):
  name, write, archive, num_classes = CIFAR_WRITERS[fmt]
  f, folder = write(tmp_path / "src")
  if layout == "archive":
    data_dir = tmp_path / "archives"
    data_dir.mkdir()
    _tar_gz(folder, data_dir / archive)
  else:
    data_dir = folder.parent if layout == "parent" else folder
  ds = data.load_dataset(_config(name, data_dir))
  check_matches(ds, f, num_classes)
  assert ds.train_images.shape[1:] == (32, 32, 3)
  assert str(data_dir / archive if layout == "archive" else folder) in ds.source


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_idx(tmp_path, gz):
  f, folder = write_fashion_mnist(tmp_path, gz)
  ds = data.load_dataset(_config("fashion_mnist", folder))
  check_matches(ds, f, 10)
  assert ds.train_images.shape[1:] == (28, 28, 1)
  assert "IDX" in ds.source


def test_debian_folder_is_the_fashion_mnist_default(tmp_path, monkeypatch):
  f, folder = write_fashion_mnist(tmp_path / "debian", gz=True)
  monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", str(folder))
  ds = data.load_dataset(_config("fashion_mnist"))
  check_matches(ds, f, 10)
  assert ds.source.startswith(str(folder))


@pytest.mark.skipif(not os.path.isdir(data.DEBIAN_FASHION_MNIST_DIR),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
  ds = data.load_dataset(_config("fashion_mnist"))
  assert (len(ds.train_labels), len(ds.val_labels), len(ds.test_labels)) == (54000, 6000, 10000)
  assert ds.train_images.shape[1:] == ds.test_images.shape[1:] == (28, 28, 1)
  for labels in (ds.train_labels, ds.val_labels, ds.test_labels):
    assert set(np.unique(labels)) == set(range(10))
  assert 60 < ds.mean[0] < 90 and 80 < ds.std[0] < 100


def test_split_is_fixed_and_subset_is_a_prefix(tmp_path):
  _, folder = write_cifar10_binary(tmp_path)
  a = data.load_dataset(_config("cifar10", folder, seed=0))
  b = data.load_dataset(_config("cifar10", folder, seed=123))
  for field in ("train_images", "train_labels", "val_images", "val_labels"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  small = data.load_dataset(_config("cifar10", folder, max_train_examples=7))
  np.testing.assert_array_equal(small.train_images, a.train_images[:7])
  np.testing.assert_array_equal(small.val_images, a.val_images)
  np.testing.assert_array_equal(small.test_images, a.test_images)
  np.testing.assert_array_equal(small.mean, a.mean)  # statistics of the whole training split


def _permuted(f, seed):
  """The same examples in another order, as another source (TFDS) stores them."""
  order = np.random.default_rng(seed).permutation(len(f.train_labels))
  return Fixture(f.train_images[order], f.train_labels[order], f.test_images, f.test_labels)


def _check_same_split(a, b):
  for field in ("train_images", "train_labels", "val_images", "val_labels", "mean", "std"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def _write_idx(folder, f, gz):
  for name, array in [("train-images-idx3-ubyte", f.train_images[..., 0]),
                      ("train-labels-idx1-ubyte", f.train_labels),
                      ("t10k-images-idx3-ubyte", f.test_images[..., 0]),
                      ("t10k-labels-idx1-ubyte", f.test_labels)]:
    blob = _idx(array)
    (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(blob) if gz else blob)


def test_split_is_the_same_from_every_source(tmp_path):
  f, folder = write_fashion_mnist(tmp_path / "official", gz=False)
  shuffled = tmp_path / "shuffled"
  shuffled.mkdir()
  _write_idx(shuffled, _permuted(f, 1), gz=True)
  a = data.load_dataset(_config("fashion_mnist", folder))
  _check_same_split(a, data.load_dataset(_config("fashion_mnist", shuffled)))
  check_matches(a, f, 10)
  # The seeded split of runs made before follows the file order: it differs.
  b = data.load_dataset(_config("fashion_mnist", shuffled, val_split="seeded"))
  assert {x.tobytes() for x in a.val_images} != {x.tobytes() for x in b.val_images}


def test_split_is_the_same_from_tfds(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  f, folder = write_fashion_mnist(tmp_path / "official", gz=True)
  tfds_order = _permuted(f, 2)

  def as_dataset(self, split, **kwargs):
    del self, kwargs
    train = "train" in str(split)
    return tf.data.Dataset.from_tensor_slices({
        "image": tfds_order.train_images if train else tfds_order.test_images,
        "label": (tfds_order.train_labels if train else tfds_order.test_labels).astype(np.int64)})

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    from_tfds = data.load_dataset(_config("fashion_mnist", tmp_path))
  assert from_tfds.source.startswith("TFDS fashion_mnist")
  _check_same_split(data.load_dataset(_config("fashion_mnist", folder)), from_tfds)


def test_synthetic():
  config = _config("synthetic", synthetic_image_size=16, synthetic_num_train=200)
  a, b = data.load_dataset(config), data.load_dataset(config)
  assert a.train_images.shape == (180, 16, 16, 3) and a.train_images.dtype == np.uint8
  assert len(a.val_labels) == 20 and len(a.test_labels) == 50 and a.num_classes == 10
  np.testing.assert_array_equal(a.train_images, b.train_images)
  # Learnable: the nearest class mean of the training images classifies the test set.
  means = np.stack([a.train_images[a.train_labels == c].mean(0) for c in range(10)])
  dists = ((a.test_images[:, None].astype(np.float32) - means[None]) ** 2).sum((2, 3, 4))
  assert (dists.argmin(1) == a.test_labels).mean() > 0.9


# --- TFDS -------------------------------------------------------------------


@pytest.mark.parametrize("name,shape", [("cifar10", (32, 32, 3)), ("fashion_mnist", (28, 28, 1))])
def test_tfds_mocked(tmp_path, name, shape):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=30):
    ds = data.load_dataset(_config(name, tmp_path))
  assert ds.source.startswith(f"TFDS {name}")
  assert (len(ds.train_labels), len(ds.val_labels), len(ds.test_labels)) == (27, 3, 30)
  assert ds.train_images.shape[1:] == ds.test_images.shape[1:] == shape
  assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
  assert ds.mean.shape == ds.std.shape == (shape[-1],)


def test_tfds_unreachable_fails_fast(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(sources, "_PROBE_TIMEOUT_S", 0.1)
  monkeypatch.setattr(sources, "_can_download", lambda url: False)
  hung = threading.Event()  # A download that waits for an unreachable host.
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", lambda self: hung.wait())
  with pytest.raises(data.DataError, match="cannot download") as e:
    data.load_dataset(_config("fashion_mnist", tmp_path))
  hung.set()
  _check_one_line(e, str(tmp_path), "train-images-idx3-ubyte",
                  "apt-get install dataset-fashion-mnist")


@pytest.mark.usefixtures("tensorflow_hidden")
def test_tfds_not_installed(tmp_path):
  with pytest.raises(data.DataError, match="not installed") as e:
    data.load_dataset(_config("cifar10", tmp_path))
  _check_one_line(e, "cifar-10-python.tar.gz", "cifar-10-batches-bin/", "TFDS with network",
                  "--config.dataset=fashion_mnist", "python -m l0jax.quickstart")


def test_the_readmes_first_training_command_runs_offline():
  readme = open(os.path.join(REPO, "README.md")).read()
  use = readme[readme.index("\n## Use\n"):]
  first = next(line for line in use.splitlines() if line.startswith("python main.py"))
  assert "--config.dataset=fashion_mnist" in first, first


def test_import_does_not_import_tensorflow():
  code = "import l0jax.data, sys; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
  result = Program("-c", code).wait()
  assert result.returncode == 0, result.stderr[-3000:]


# --- Errors -----------------------------------------------------------------


def _check_one_line(excinfo, *fragments):
  message = str(excinfo.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message


def test_unknown_dataset():
  with pytest.raises(UserError) as e:  # config.validate's refusal, before any data is looked for
    validate(_config("imagenet"))
  _check_one_line(e, "imagenet", "cifar10, cifar100, fashion_mnist, synthetic")


def test_missing_data_dir(tmp_path):
  with pytest.raises(data.DataError, match="does not exist") as e:
    data.load_dataset(_config("cifar10", tmp_path / "nope"))
  _check_one_line(e, str(tmp_path / "nope"))
  (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
  with pytest.raises(data.DataError, match="is a file; give the folder"):
    data.load_dataset(_config("cifar10", tmp_path / "cifar-10-python.tar.gz"))


def test_incomplete_folder(tmp_path):
  _, folder = write_cifar10_python(tmp_path)
  (folder / "data_batch_3").unlink()
  with pytest.raises(data.DataError, match="lacks data_batch_3") as e:
    data.load_dataset(_config("cifar10", tmp_path))
  _check_one_line(e, str(folder))


def test_truncated_archive(tmp_path):
  _, folder = write_cifar100_python(tmp_path / "src")
  blob = _tar_gz(folder, tmp_path / "full.tar.gz").read_bytes()
  (tmp_path / "cifar-100-python.tar.gz").write_bytes(blob[:len(blob) // 2])
  with pytest.raises(data.DataError) as e:
    data.load_dataset(_config("cifar100", tmp_path))
  _check_one_line(e, str(tmp_path / "cifar-100-python.tar.gz"))


def test_not_a_gzip_archive(tmp_path):
  (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"not a gzip file at all")
  with pytest.raises(data.DataError, match="Cannot read") as e:
    data.load_dataset(_config("cifar10", tmp_path))
  _check_one_line(e, "cifar-10-binary.tar.gz")


def test_truncated_pickle(tmp_path):
  _, folder = write_cifar10_python(tmp_path)
  blob = (folder / "data_batch_2").read_bytes()
  (folder / "data_batch_2").write_bytes(blob[:len(blob) - 100])
  with pytest.raises(data.DataError, match="Cannot read") as e:
    data.load_dataset(_config("cifar10", folder))
  _check_one_line(e, str(folder / "data_batch_2"))


@pytest.mark.parametrize("layout", ["folder", "archive"])
def test_pickle_that_runs_code_is_refused(tmp_path, layout):
  _, folder = write_cifar10_python(tmp_path / "src")
  marker = tmp_path / "marker"
  blob = pickle.dumps({b"data": CreatesAFile(marker), b"labels": []}, protocol=2)
  pickle.loads(blob)[b"data"].close()  # The crafted batch does run code, unless refused.
  assert marker.exists()
  marker.unlink()
  (folder / "data_batch_1").write_bytes(blob)
  data_dir = folder
  if layout == "archive":
    data_dir = tmp_path / "archives"
    data_dir.mkdir()
    _tar_gz(folder, data_dir / "cifar-10-python.tar.gz")
  with pytest.raises(data.DataError, match="Refused") as e:
    data.load_dataset(_config("cifar10", data_dir))
  _check_one_line(e, "data_batch_1", f"asks for {open.__module__}.open", "cannot run code")
  assert not marker.exists()


def test_pickle_of_another_array_type_is_refused(tmp_path):
  _, folder = write_cifar10_python(tmp_path)
  batch = pickle.loads((folder / "test_batch").read_bytes(), encoding="bytes")
  batch[b"data"] = batch[b"data"].astype(np.float32)
  (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
  with pytest.raises(data.DataError, match="Refused") as e:
    data.load_dataset(_config("cifar10", folder))
  _check_one_line(e, str(folder / "test_batch"), "float32")


def test_pickle_as_numpy_1_wrote_it(tmp_path):
  """The official batches name numpy 1's module, numpy.core.multiarray, which numpy 2 renamed."""
  f, folder = write_cifar10_python(tmp_path)
  for path in folder.iterdir():
    blob = path.read_bytes()
    path.write_bytes(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
  assert b"numpy.core.multiarray\n_reconstruct" in (folder / "data_batch_1").read_bytes()
  check_matches(data.load_dataset(_config("cifar10", folder)), f, 10)


def test_wrong_record_size(tmp_path):
  _, folder = write_cifar100_binary(tmp_path)
  with open(folder / "test.bin", "ab") as f:
    f.write(b"\0" * 5)
  with pytest.raises(data.DataError, match="3074-byte records") as e:
    data.load_dataset(_config("cifar100", folder))
  _check_one_line(e, str(folder / "test.bin"))


def test_corrupt_gz_idx(tmp_path):
  _, folder = write_fashion_mnist(tmp_path, gz=True)
  path = folder / "t10k-images-idx3-ubyte.gz"
  blob = bytearray(path.read_bytes())
  blob[len(blob) // 2:] = b"\xff" * (len(blob) - len(blob) // 2)
  path.write_bytes(bytes(blob))
  with pytest.raises(data.DataError, match="Cannot read") as e:
    data.load_dataset(_config("fashion_mnist", folder))
  _check_one_line(e, str(path))


@pytest.mark.parametrize("damage,match", [
    (lambda blob: blob[:3] + b"\x04" + blob[4:], "magic"),  # 4 dims in an image file
    (lambda blob: blob[:-1], "does not match the header"),
])
def test_bad_idx_header(tmp_path, damage, match):
  _, folder = write_fashion_mnist(tmp_path, gz=False)
  path = folder / "train-images-idx3-ubyte"
  path.write_bytes(damage(path.read_bytes()))
  with pytest.raises(data.DataError, match=match) as e:
    data.load_dataset(_config("fashion_mnist", folder))
  _check_one_line(e, str(path))


def test_label_out_of_range(tmp_path):
  _, folder = write_fashion_mnist(tmp_path, gz=False)
  (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.full(BATCH, 10)))
  with pytest.raises(data.DataError, match=r"labels in \[10, 10\]"):
    data.load_dataset(_config("fashion_mnist", folder))


def test_test_images_of_another_shape(tmp_path):
  _, folder = write_fashion_mnist(tmp_path, gz=False)
  (folder / "t10k-images-idx3-ubyte").write_bytes(_idx(np.zeros((BATCH, 14, 14), np.uint8)))
  with pytest.raises(data.DataError, match=r"test split .* shape \(14, 14, 1\), the training "
                     r"split \(28, 28, 1\)") as e:
    data.load_dataset(_config("fashion_mnist", folder))
  _check_one_line(e, str(folder))


# --- On device --------------------------------------------------------------


def test_normalize():
  images = jnp.asarray([[[[0, 10]], [[255, 20]]]], jnp.uint8)  # [1, 2, 1, 2]
  out = data.normalize(images, np.array([10.0, 20.0]), np.array([5.0, 2.0]))
  np.testing.assert_allclose(out[0, :, 0], [[-2.0, -5.0], [49.0, 0.0]])
  assert out.dtype == jnp.float32
  assert data.normalize(images, [0.0, 0.0], [1.0, 1.0], jnp.bfloat16).dtype == jnp.bfloat16


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_augment_shape_dtype_range_determinism(dtype):
  images = jnp.asarray(_images(8, 0), dtype) / 255 - 0.5
  augment = jax.jit(data.augment)
  a = augment(jax.random.key(0), images)
  assert a.shape == images.shape and a.dtype == dtype
  np.testing.assert_array_equal(a, augment(jax.random.key(0), images))
  assert not np.array_equal(a, augment(jax.random.key(1), images))
  tol = 1e-6 if dtype == jnp.float32 else 0
  assert a.min() >= images.min() - tol and a.max() <= images.max() + tol


def test_full_box_is_identity():
  image = jnp.asarray(_images(1, 0)[0], jnp.float32)
  out = augmentation._resized_crop(image, jnp.float32(0), jnp.float32(0), jnp.float32(32),
                                   jnp.float32(32))
  np.testing.assert_allclose(out, image, atol=1e-4)


def test_augment_flip_and_crop_statistics():
  """On ramps the output reveals each example's flip and crop box; check their distributions."""
  n, size = 512, 32
  ramp = jnp.arange(size, dtype=jnp.float32)
  images = jnp.stack([jnp.broadcast_to(ramp[None, :], (size, size)),  # channel 0: x
                      jnp.broadcast_to(ramp[:, None], (size, size))], -1)  # channel 1: y
  out = jax.jit(data.augment)(jax.random.key(42), jnp.broadcast_to(images, (n, size, size, 2)))
  mid = size // 2
  dx = (out[:, mid, mid + 1, 0] - out[:, mid, mid - 1, 0]) / 2  # +-w/W: sign is the flip
  dy = (out[:, mid + 1, mid, 1] - out[:, mid - 1, mid, 1]) / 2  # h/H, never flipped
  flipped = np.asarray(dx < 0)
  assert 0.4 < flipped.mean() < 0.6
  w, h = np.abs(np.asarray(dx)), np.asarray(dy)
  area, ratio = w * h, w / h
  eps = 1e-4
  assert area.min() >= 0.8 - eps and area.max() <= 1 + eps
  assert ratio.min() >= 0.9 - eps and ratio.max() <= 1.1 + eps
  assert area.min() < 0.82 and area.max() > 0.95  # the whole range is used
  assert (h > 0).all()
  # The box lies inside the image: every output pixel stays within [0, size - 1].
  assert out.min() >= -eps and out.max() <= size - 1 + eps
  # Per-example: identical inputs come out differently.
  assert len({np.asarray(o).tobytes() for o in out}) == n
