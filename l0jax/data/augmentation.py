"""The on-device input pipeline: normalisation, and the PyTorch original's augmentation."""

import jax
import jax.numpy as jnp
import numpy as np

# The PyTorch original's augmentation: crop area as a fraction of the image, and w/h ratio.
CROP_AREA = (0.8, 1.0)
CROP_RATIO = (0.9, 1.1)


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
