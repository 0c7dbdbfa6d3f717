"""pyradiomics adapter: the reference voxel-based GLCM maps, for parity tests and benchmarks.

Runs radiomics.featureextractor (voxelBased=True) on numpy arrays and pastes the maps of
the cropped region back into the full array, so the result is directly comparable with
`osteojax.texture.glcm_maps`.  Host-only (numpy / SimpleITK), slow: ~3k ROI voxels/s.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from osteojax.texture.glcm import FEATURES
from osteojax.texture.settings import GLCMSettings


def quiet_pyradiomics():
  """Errors only from pyradiomics. Its logger stays at INFO whatever setVerbosity says and
  propagates to the root logger, where absl prints a dozen lines per ROI."""
  import radiomics
  radiomics.setVerbosity(logging.ERROR)
  logging.getLogger('radiomics').setLevel(logging.ERROR)


def to_sitk(image: np.ndarray, mask: np.ndarray, spacing: Sequence[float]):
  """numpy [D, H, W] image/mask + per-axis spacing -> SimpleITK image and label-1 mask."""
  img = sitk.GetImageFromArray(np.asarray(image))
  msk = sitk.GetImageFromArray((np.asarray(mask) > 0).astype(np.uint8))
  img.SetSpacing(tuple(float(s) for s in spacing)[::-1])
  msk.SetSpacing(tuple(float(s) for s in spacing)[::-1])
  return img, msk


def pyradiomics_maps(image: np.ndarray, mask: np.ndarray, spacing: Sequence[float],
                     settings: GLCMSettings = GLCMSettings(), voxel_batch: int = -1
                     ) -> np.ndarray:
  """Reference maps from pyradiomics 3.0.1.

  image: [D, H, W] or [H, W] (its dtype is kept: pyradiomics bins int images in integer
  arithmetic); mask: same shape, ROI = mask > 0; spacing: per array axis.
  voxel_batch: pyradiomics' voxelBatch (-1, its default: all ROI voxels at once).  Other
  values only save memory/time; they change results only in one corner case (an angle
  empty in a whole batch but not in the whole ROI changes JointAverage's NaN pattern).
  Returns [4, *image.shape] float64 in FEATURES order, settings.initValue outside the
  region pyradiomics returns (ROI bounding box padded by kernelRadius).
  """
  from radiomics import featureextractor

  quiet_pyradiomics()
  img, msk = to_sitk(image, mask, spacing)
  kw = settings.as_pyradiomics()
  kw.update(additionalInfo=False, label=1, voxelBatch=voxel_batch)
  ex = featureextractor.RadiomicsFeatureExtractor(**kw)
  ex.disableAllFeatures()
  ex.enableFeaturesByName(glcm=list(FEATURES))
  result = ex.execute(img, msk, voxelBased=True)
  out = np.full((4,) + np.shape(image), settings.initValue, np.float64)
  for c, name in enumerate(FEATURES):
    fmap = result['original_glcm_' + name]
    arr = sitk.GetArrayFromImage(fmap)
    start = img.TransformPhysicalPointToIndex(fmap.GetOrigin())[::-1]
    sl = tuple(slice(s, s + n) for s, n in zip(start, arr.shape))
    out[(c,) + sl] = arr
  return out
