"""GLCM texture settings, named and defaulted exactly as in pyradiomics 3.0.1.

The settings object is a frozen (hashable) dataclass so it can be a static argument of
`jax.jit`; `as_pyradiomics()` gives the keyword arguments that make pyradiomics compute
the same maps, and `digest()` a stable hash used to key cached texture pools.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping, Optional

WEIGHTING_NORMS = (None, 'infinity', 'euclidean', 'manhattan', 'no_weighting')


@dataclasses.dataclass(frozen=True)
class GLCMSettings:
  """pyradiomics voxel-based GLCM settings (same names, same defaults).

  binWidth: fixed bin width of the gray-level discretisation (ignored if binCount is set).
  binCount: fixed number of bins; None means fixed bin width.
  kernelRadius: kernel half-size in voxels (the kernel is a (2r+1)^3 box, clipped at the
    cropped image border).
  maskedKernel: True: only ROI voxels take part (pairs inside the mask); False: every voxel of
    the kernel takes part and the bin edges come from the whole cropped image.
  force2D / force2Ddimension: in-plane kernel and angles only, the plane being orthogonal to
    array axis `force2Ddimension` (0 = slices along the first axis).
  symmetricalGLCM: count each pair in both directions (only JointAverage depends on it).
  weightingNorm: None (mean over angles) or a distance weighting of the angle matrices
    ('infinity', 'euclidean', 'manhattan', 'no_weighting'; any other string acts as weight 1).
  initValue: value of the maps outside the ROI.
  """
  binWidth: float = 25.0
  binCount: Optional[int] = None
  kernelRadius: int = 1
  maskedKernel: bool = True
  force2D: bool = False
  force2Ddimension: int = 0
  symmetricalGLCM: bool = True
  weightingNorm: Optional[str] = None
  initValue: float = 0.0

  def __post_init__(self):
    if self.kernelRadius < 1:
      raise ValueError(f'kernelRadius must be >= 1 (voxel-based GLCM), got {self.kernelRadius}')
    if self.binCount is None and not self.binWidth > 0:
      raise ValueError(f'binWidth must be > 0, got {self.binWidth}')
    if self.binCount is not None and self.binCount < 1:
      raise ValueError(f'binCount must be >= 1, got {self.binCount}')

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'GLCMSettings':
    """Builds settings from a pyradiomics-style dict; unknown keys raise ValueError."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'unknown GLCM settings: {unknown}; known: {sorted(names)}')
    return cls(**dict(d))

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)

  def as_pyradiomics(self) -> dict:
    """Keyword arguments for radiomics.featureextractor / radiomics.glcm (voxel-based)."""
    kw = self.as_dict()
    if kw['binCount'] is None:
      del kw['binCount']
    if kw['weightingNorm'] is None:
      del kw['weightingNorm']
    kw['distances'] = [1]
    return kw

  def digest(self) -> str:
    """Stable sha256 hex digest of the settings (key order independent)."""
    payload = json.dumps(self.as_dict(), sort_keys=True, separators=(',', ':'))
    return hashlib.sha256(payload.encode()).hexdigest()
