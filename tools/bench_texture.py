"""Benchmark: voxel-wise GLCM maps, pyradiomics 3.0.1 vs osteojax, on the same ROIs.

Prints one JSON line.  Work is counted in ROI (mask) voxels for both, since pyradiomics
computes only those; osteojax time excludes JAX compilation (one warm-up pass over the same
shapes first; the compile time is reported separately) and is the best of --repeats timed
passes over all ROIs, host-side crop/pad/paste included.

  python tools/bench_texture.py [--n32 4] [--n64 1] [--binWidth 25] [--kernelRadius 1]
  python tools/bench_texture.py --n32 16 --n64 4 --save-reference ref.npz   # where pyradiomics is
  python tools/bench_texture.py --n32 16 --n64 4 --reference ref.npz        # e.g. on a GPU machine

`bench(rois, settings)` takes any list of (image, mask, spacing); by default the ROIs are
OsteoSim vertebrae across the vBMD range (32^3 at 1.8 mm, 64^3 at 0.9 mm; --source synthetic
uses the simple stand-ins of osteojax/texture/synthetic.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from osteojax.data import phantom  # noqa: E402
from osteojax.texture import GLCMSettings  # noqa: E402
from osteojax.texture.pool import texture_maps  # noqa: E402
from osteojax.texture.synthetic import ct_vertebra_roi  # noqa: E402


def max_rel_error(ours: np.ndarray, ref: np.ndarray) -> tuple:
  """(max relative error over voxels where ref is finite, number of NaN-pattern mismatches)."""
  fin = np.isfinite(ref)
  err = np.abs(ours[fin].astype(np.float64) - ref[fin])
  scale = np.abs(ref[fin])
  rel = np.where(scale > 0, err / np.where(scale > 0, scale, 1), np.where(err > 0, np.inf, 0))
  return float(rel.max(initial=0.0)), int((np.isnan(ours) != np.isnan(ref)).sum())


def reference_maps(rois, settings: GLCMSettings, voxel_batch: int):
  """pyradiomics' maps of `rois` and the seconds they took, with the machine they ran on."""
  from osteojax.texture.reference import pyradiomics_maps   # pyradiomics only where it runs
  t0 = time.perf_counter()
  refs = [pyradiomics_maps(img, msk, sp, settings, voxel_batch) for img, msk, sp in rois]
  return refs, time.perf_counter() - t0, _machine()


def _machine() -> str:
  return f'{platform.processor() or platform.machine()}, {os.cpu_count()} cpus'


def rois_digest(rois) -> str:
  """A digest of the ROIs' images, masks and spacings: a saved reference is of these ROIs only."""
  h = hashlib.sha1()
  for img, msk, sp in rois:
    for a in (img, msk, sp):
      h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
  return h.hexdigest()


def save_reference(path: str, rois, refs, seconds: float, machine: str) -> None:
  np.savez_compressed(path, seconds=seconds, machine=machine, n=len(refs),
                      rois=rois_digest(rois), **{f'map{i}': r for i, r in enumerate(refs)})


def load_reference(path: str, rois):
  with np.load(path) as z:
    if str(z['rois']) != rois_digest(rois):
      raise SystemExit(f'error: {path} holds the maps of other ROIs (other --n32/--n64/--seed/'
                       '--source?)')
    return ([z[f'map{i}'] for i in range(int(z['n']))], float(z['seconds']),
            str(z['machine']))


def bench(rois, settings: GLCMSettings = GLCMSettings(), repeats: int = 5,
          batch_size: int = 4, voxel_batch: int = 1000, reference=None) -> dict:
  """Times pyradiomics and osteojax on `rois` = [(image, mask, spacing), ...].

  voxel_batch: pyradiomics voxelBatch for the timed reference run.  Its default (-1, all
  voxels at once) allocates Nv x Ng x Ng x 13 float64 and runs ~3x slower on a 64^3 ROI;
  1000 is about its fastest, so the reported speedup is the conservative one.
  reference: (maps, seconds, machine) of an earlier pyradiomics run on the same ROIs
  (--reference, for a machine without pyradiomics); None runs pyradiomics here.
  """
  n_vox = int(sum(int((np.asarray(m) > 0).sum()) for _, m, _ in rois))
  refs, t_pyr, pyr_machine = reference or reference_maps(rois, settings, voxel_batch)

  t0 = time.perf_counter()
  texture_maps(rois, settings, batch_size)                    # compile + first run
  t_first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    ours = texture_maps(rois, settings, batch_size)
    times.append(time.perf_counter() - t0)
  t_ojx = min(times)

  errs = [max_rel_error(o, r) for o, r in zip(ours, refs)]
  return dict(
      rois=len(rois), shapes=sorted({tuple(int(s) for s in np.shape(i)) for i, _, _ in rois}),
      roi_voxels=n_vox, settings=settings.as_dict(), pyradiomics_voxelBatch=voxel_batch,
      pyradiomics_s=round(t_pyr, 3), pyradiomics_voxels_per_s=round(n_vox / t_pyr, 1),
      osteojax_s=round(t_ojx, 5), osteojax_s_median=round(float(np.median(times)), 5),
      osteojax_voxels_per_s=round(n_vox / t_ojx, 1),
      osteojax_first_call_s=round(t_first, 3),
      osteojax_voxels_per_s_incl_compile=round(n_vox / t_first, 1),
      speedup=round(t_pyr / t_ojx, 1),
      speedup_median=round(t_pyr / float(np.median(times)), 1),
      speedup_incl_compile=round(t_pyr / t_first, 1),
      max_rel_error=max(e for e, _ in errs), nan_mismatches=sum(n for _, n in errs),
      timing='osteojax: best of %d warm passes (JAX compile excluded; first call incl. '
             'compile reported separately); both count ROI voxels' % repeats,
      machine=_machine(), pyradiomics_machine=pyr_machine, jax_device=str(jax.devices()[0]))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--n32', type=int, default=4, help='number of 32^3 ROIs')
  p.add_argument('--n64', type=int, default=1, help='number of 64^3 ROIs')
  p.add_argument('--binWidth', type=float, default=25.0)
  p.add_argument('--kernelRadius', type=int, default=1)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--source', default='osteosim', choices=('osteosim', 'synthetic'),
                 help='ROIs: OsteoSim vertebrae (default) or the simple synthetic stand-ins')
  p.add_argument('--voxelBatch', type=int, default=1000,
                 help='pyradiomics voxelBatch for the reference run (-1: its default)')
  p.add_argument('--save-reference', default='', metavar='NPZ',
                 help='also write the pyradiomics maps and time to NPZ')
  p.add_argument('--reference', default='', metavar='NPZ',
                 help='pyradiomics maps and time from an earlier --save-reference run on the '
                      'same ROIs (a machine without pyradiomics; the speed-up then compares '
                      'two machines, and the JSON names both)')
  a = p.parse_args(argv)
  if a.source == 'osteosim':   # OsteoSim vertebrae: 32^3 at 1.8 mm, 64^3 at 0.9 mm
    rois = (phantom.sample_rois(a.n32, (32,) * 3, 1.8, a.seed)
            + phantom.sample_rois(a.n64, (64,) * 3, 0.9, a.seed + 1))
  else:
    rng = np.random.default_rng(a.seed)
    rois = ([ct_vertebra_roi(rng, (32, 32, 32)) for _ in range(a.n32)]
            + [ct_vertebra_roi(rng, (64, 64, 64)) for _ in range(a.n64)])
  settings = GLCMSettings(binWidth=a.binWidth, kernelRadius=a.kernelRadius)
  reference = load_reference(a.reference, rois) if a.reference else None
  if reference is None and a.save_reference:
    reference = reference_maps(rois, settings, a.voxelBatch)
    save_reference(a.save_reference, rois, *reference)
  out = bench(rois, settings, a.repeats, voxel_batch=a.voxelBatch, reference=reference)
  out['pyradiomics_here'] = not a.reference
  print(json.dumps(out))
  return 0


if __name__ == '__main__':
  sys.exit(main())
