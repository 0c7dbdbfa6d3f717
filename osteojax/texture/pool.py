"""Texture pool of an ROI: {original, TF1..TF4} and its network-input normalisation.

`texture_maps` runs the GLCM maps for a list of ROIs of any shapes: each ROI is cropped
to pyradiomics' region (mask bounding box padded by kernelRadius), padded to a bucket shape
(multiple of 8 per axis) with a `support` mask, and ROIs of one bucket go through the jitted,
vmapped `glcm_maps_batch` in fixed-size batches (one compile per bucket shape).  The crop
and the padding do not change any value (see the parity contract in docs/texture.md).

`normalize_pool` is THE normalisation of the pool for network input; nothing else should
rescale pool channels.
"""

from __future__ import annotations

import collections
import hashlib
import json
from typing import Iterable, List, Sequence, Tuple

import jax.numpy as jnp
import numpy as np

from osteojax.texture.glcm import FEATURES, glcm_maps_batch
from osteojax.texture.settings import GLCMSettings

POOL_CHANNELS = ('original',) + FEATURES

# normalize_pool constants (documented in its docstring; part of the pool cache key).
HU_WINDOW = (-200.0, 1300.0)
# log1p(map) / scale: about the log1p of the map's upper range in trabecular/cortical bone
# for binWidth 25 HU (Autocorrelation ~ i*j up to ~3000, JointAverage ~ i up to ~55,
# Contrast up to ~150, DifferenceAverage up to ~12), so each channel is O(1).
TF_LOG_SCALES = (8.0, 4.0, 5.0, 2.5)
NORMALIZATION_VERSION = 1

Roi = Tuple[np.ndarray, np.ndarray, Sequence[float]]   # image [*S], mask [*S], spacing [ndim]


def normalization_params() -> dict:
  return dict(version=NORMALIZATION_VERSION, hu_window=list(HU_WINDOW),
              tf_log_scales=list(TF_LOG_SCALES))


def pool_settings_hash(settings: GLCMSettings) -> str:
  """sha256 of GLCM settings + normalisation constants: the settings part of a pool key."""
  payload = json.dumps(dict(glcm=settings.as_dict(), normalization=normalization_params()),
                       sort_keys=True, separators=(',', ':'))
  return hashlib.sha256(payload.encode()).hexdigest()


def normalize_pool(image, maps, mask):
  """Network input from an ROI's raw pool.

  image: [*S] HU; maps: [4, *S] raw GLCM maps (FEATURES order, as glcm_maps / pyradiomics,
  binWidth 25 HU assumed by the scales); mask: [*S], ROI = mask > 0.
  Returns [5, *S] float32 (POOL_CHANNELS order):
    original: (clip(HU, -200, 1300) + 200) / 1500, in [0, 1];
    TF k:     log1p(max(map_k, 0)) / TF_LOG_SCALES[k]  (Autocorrelation / 8,
              JointAverage / 4, Contrast / 5, DifferenceAverage / 2.5), NaN -> 0;
    every channel is 0 outside the mask.
  Works on numpy or jax arrays (returns a jax array).
  """
  roi = jnp.asarray(mask) > 0
  lo, hi = HU_WINDOW
  orig = (jnp.clip(jnp.asarray(image, jnp.float32), lo, hi) - lo) / (hi - lo)
  maps = jnp.asarray(maps, jnp.float32)
  scales = jnp.asarray(TF_LOG_SCALES, jnp.float32).reshape((4,) + (1,) * roi.ndim)
  tf = jnp.log1p(jnp.maximum(jnp.nan_to_num(maps, nan=0.0), 0.0)) / scales
  pool = jnp.concatenate([orig[None], tf], axis=0)
  return jnp.where(roi[None], pool, 0.0).astype(jnp.float32)


def crop_slices(mask: np.ndarray, radius: int) -> Tuple[slice, ...]:
  """pyradiomics' crop: bounding box of mask > 0 padded by radius, clipped to the array."""
  idx = np.nonzero(np.asarray(mask) > 0)
  if not idx[0].size:
    raise ValueError('empty mask')
  return tuple(slice(max(int(i.min()) - radius, 0), min(int(i.max()) + radius + 1, n))
               for i, n in zip(idx, np.shape(mask)))


def bucket_shape(shape: Sequence[int], multiple: int = 8) -> Tuple[int, ...]:
  """Round each axis up to a multiple (axes of size 1 stay 1: they carry no angle)."""
  return tuple(n if n == 1 else -(-n // multiple) * multiple for n in shape)


# What one compilation of glcm_maps_batch costs, in voxels of compute (2-core CPU: a
# compilation takes about as long as ~100 ROIs of 32^3).
COMPILE_COST_VOXELS = 100 * 32 ** 3


def merge_buckets(counts: dict, compile_cost_voxels: float = COMPILE_COST_VOXELS) -> dict:
  """{bucket shape: shape it is computed at}: a bucket moves into the smallest other bucket
  that contains it (every axis >=) when padding its ROIs to that shape costs less compute
  than compiling its own shape. counts: {bucket shape: number of ROIs}. Fewest ROIs first."""
  target = {b: b for b in counts}
  n = dict(counts)
  for b in sorted(counts, key=lambda b: (counts[b], np.prod(b))):
    hosts = [h for h in n if h != b and len(h) == len(b) and all(x >= y for x, y in zip(h, b))]
    if not hosts:
      continue
    h = min(hosts, key=lambda h: np.prod(h))
    if n[b] * (np.prod(h) - np.prod(b)) < compile_cost_voxels:
      n[h] += n.pop(b)
      for k, v in target.items():
        if v == b:
          target[k] = h
  return target


def max_gray_level(image: np.ndarray, mask: np.ndarray, settings: GLCMSettings) -> int:
  """Upper bound of the discretised gray levels of an ROI (host, numpy)."""
  if settings.binCount is not None:
    return int(settings.binCount)
  sl = crop_slices(mask, settings.kernelRadius)
  vals = np.asarray(image, np.float64)[sl]
  if settings.maskedKernel:
    vals = vals[np.asarray(mask)[sl] > 0]
  w = settings.binWidth
  lo = vals.min() - vals.min() % w
  return int((vals.max() - lo) // w) + 1


def check_int32_range(ng: int, settings: GLCMSettings) -> None:
  """Raises ValueError if kernel sums of i*j could overflow int32 (exactness limit)."""
  r = settings.kernelRadius
  pairs = (2 * r + 1) ** 2 * 2 * r          # most pairs of one angle in one kernel
  if pairs * ng * ng >= 2 ** 31:
    raise ValueError(f'{ng} gray levels with kernelRadius {r} overflow int32 kernel sums; '
                     'increase binWidth or use binCount')


def texture_maps(rois: Iterable[Roi], settings: GLCMSettings = GLCMSettings(),
                 batch_size: int = 4, multiple: int = 8) -> List[np.ndarray]:
  """Raw GLCM maps for ROIs of any shapes.

  rois: iterable of (image [*S_i], mask [*S_i], spacing [ndim]); every mask non-empty.
  Returns a list of [4, *S_i] float32 numpy arrays (FEATURES order), equal to
  `glcm_maps` on each full ROI.  Batches of `batch_size` per bucket shape, the last one
  padded with empty ROIs, so that each bucket shape compiles once (a compilation costs as much
  as ~100 ROIs of 32^3 on a CPU; pass many ROIs per call to keep the padding small); a bucket
  with few ROIs is computed at a larger one's shape when that costs less (merge_buckets).
  """
  rois = list(rois)
  r = settings.kernelRadius
  groups = collections.defaultdict(list)
  crops = []
  buckets = []
  for image, mask, _ in rois:
    sl = crop_slices(mask, r)
    crops.append(sl)
    buckets.append(bucket_shape([s.stop - s.start for s in sl], multiple))
  shape_of = merge_buckets(collections.Counter(buckets))
  for i, b in enumerate(buckets):
    groups[shape_of[b]].append(i)
  out: List[np.ndarray] = [None] * len(rois)
  for shape, members in groups.items():
    for b0 in range(0, len(members), batch_size):
      chunk = members[b0:b0 + batch_size]
      nb = batch_size
      imgs = np.zeros((nb,) + shape, np.float32)
      msks = np.zeros((nb,) + shape, np.uint8)
      sups = np.zeros((nb,) + shape, bool)
      sps = np.ones((nb, len(shape)), np.float32)
      for k, i in enumerate(chunk):
        image, mask, spacing = rois[i]
        sl = crops[i]
        inner = tuple(slice(0, s.stop - s.start) for s in sl)
        imgs[(k,) + inner] = np.asarray(image, np.float32)[sl]
        msks[(k,) + inner] = np.asarray(mask)[sl] > 0
        sups[(k,) + inner] = True
        sps[k] = spacing
      maps = glcm_maps_batch(jnp.asarray(imgs), jnp.asarray(msks), jnp.asarray(sps),
                             jnp.asarray(sups), settings=settings)
      maps = np.stack([np.asarray(m) for m in maps], axis=1)       # [B, 4, *shape]
      for k, i in enumerate(chunk):
        image = rois[i][0]
        sl = crops[i]
        full = np.full((4,) + np.shape(image), settings.initValue, np.float32)
        inner = tuple(slice(0, s.stop - s.start) for s in sl)
        full[(slice(None),) + sl] = maps[(k, slice(None)) + inner]
        out[i] = full
  return out


def texture_pools(rois: Iterable[Roi], settings: GLCMSettings = GLCMSettings(),
                  batch_size: int = 4) -> List[np.ndarray]:
  """Normalised pools [5, *S_i] float32 (POOL_CHANNELS order) for ROIs of any shapes."""
  rois = list(rois)
  maps = texture_maps(rois, settings, batch_size)
  return [np.asarray(normalize_pool(img, m, msk)) for (img, msk, _), m in zip(rois, maps)]
