"""Annotation transfer: moving masks, images and keypoints between scans with a rigid transform.

A registration gives T: source (MRI) -> target (DXA). DXA masks move onto the MRI grid by
sampling the mask at T(p) for every MRI pixel p (nearest neighbour: labels stay labels); the MRI
moves onto the DXA grid by sampling it at T^-1(q) (linear); MRI keypoints move by T. Resampling
is SimpleITK's, on images placed at physical point spacing * (x, y) (origin 0, identity
direction), so the two grids may have different square pixel sizes when T is stated in mm.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from osteojax.align.rigid import Rigid2D


def _image(a, spacing, is_vector):
  img = sitk.GetImageFromArray(a, isVector=is_vector)
  img.SetSpacing((float(spacing), float(spacing)))
  return img


def resample(image, spacing: float, transform_mm: Rigid2D, out_hw, out_spacing: float,
             nearest: bool = False, default: float = 0.0) -> np.ndarray:
  """out(q) = image(T(q)) on an [out_h, out_w] grid. image: [H, W] or [H, W, C].

  T maps output physical points to input physical points (mm); nearest for label maps.
  Values outside the input take `default`. The dtype is kept for nearest, float32 otherwise.
  """
  a = np.asarray(image)
  if a.ndim not in (2, 3):
    raise ValueError(f'resample takes [H, W] or [H, W, C], got shape {a.shape}')
  if not (spacing > 0 and out_spacing > 0):
    raise ValueError('spacings must be positive')
  if nearest:
    if not np.issubdtype(a.dtype, np.integer):
      raise ValueError(f'nearest-neighbour resampling is for label maps (integers), got {a.dtype}')
    src = a.astype(np.int32)
  else:
    src = a.astype(np.float32)
  img = _image(src, spacing, a.ndim == 3)
  h, w = (int(v) for v in out_hw)
  out = sitk.Resample(img, [w, h], transform_mm.to_sitk(),
                      sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
                      (0.0, 0.0), (float(out_spacing), float(out_spacing)), (1.0, 0.0, 0.0, 1.0),
                      default, img.GetPixelID())
  res = sitk.GetArrayFromImage(out)
  return res.astype(a.dtype) if nearest else res.astype(np.float32)


def mask_to_source(target_mask, t_src_to_tgt_px: Rigid2D, src_hw) -> np.ndarray:
  """A target-grid label mask (DXA) moved onto the source grid (MRI): out(p) = mask(T(p)).

  Both grids share one square pixel size; T in pixels, source -> target. [H, W] -> [h, w].
  """
  return resample(target_mask, 1.0, t_src_to_tgt_px, src_hw, 1.0, nearest=True)


def image_to_target(source_image, t_src_to_tgt_px: Rigid2D, tgt_hw) -> np.ndarray:
  """The source image (MRI) on the target grid (DXA): out(q) = image(T^-1(q)), linear."""
  return resample(source_image, 1.0, t_src_to_tgt_px.inverse(), tgt_hw, 1.0)


def keypoints_to_target(points, t_src_to_tgt: Rigid2D) -> np.ndarray:
  """Source keypoints [K, 2] (x, y) moved into target coordinates (same units as T)."""
  return t_src_to_tgt.apply(points)
