"""Register an MRI onto its DXA with a trained aligner: transform JSON, resampled MRI, overlay.

  python tools/register.py --dxa DIR/dxa.nii --mri DIR/mri.nii --aligner runs/align \
      --out results/register_one [--method dense|salient|mi]

Inputs: 2-D images SimpleITK reads (NIfTI, NRRD, MHA, ...) with square pixels. Channels: either
the aligner's own channel count (in its order, e.g. DXA bone + tissue) or all the channels
BodySim stores (DXA bone, tissue; MRI fat, water), of which the aligner's are picked. Both
scans are resampled (linear) to the aligner's pixel spacing when theirs differs. Writes
- transform.json: MRI -> DXA rigid transform (angle, translation, centre) in mm (physical
  points, origin 0) and in pixels of each input grid, x = column, y = row;
- mri_on_dxa.nii: the MRI resampled onto the DXA grid (SimpleITK, linear, all its channels);
- overlay.png: DXA (grey) with the moved MRI (red).
Bad input (unreadable file, wrong channel count, missing checkpoint, NaNs, an MRI field larger
than the DXA field) -> one line `error: ...` and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import SimpleITK as sitk

from osteojax.align import bodysim_registration as br
from osteojax.align import mi, register, transfer
from osteojax.align import encoders, pairs
from osteojax.data import bodysim
from osteojax.data.io import OsteoDataError, atomic_write_text, run_cli

METHODS = ('dense', 'salient', 'mi')


def _channels(arr, path, stored, wanted):
  """Pick the aligner's channels: arr has either len(wanted) or all `stored` channels."""
  c = arr.shape[-1]
  if c == len(wanted):
    return arr
  if c == len(stored):
    return arr[..., [stored.index(n) for n in wanted]]
  raise OsteoDataError(path, f'has {c} channel(s); the aligner expects {len(wanted)} '
                             f'({", ".join(wanted)}) or all of {", ".join(stored)}')


def _to_spacing(arr, spacing, new):
  """Linear resampling of an [H, W, C] image with square pixels to square pixels of `new` mm."""
  if np.isclose(spacing, new, rtol=1e-3):
    return arr
  h, w = arr.shape[:2]
  size = [max(int(round(w * spacing / new)), 1), max(int(round(h * spacing / new)), 1)]
  img = sitk.GetImageFromArray(arr.astype(np.float32), isVector=True)
  img.SetSpacing((spacing, spacing))
  out = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, (0.0, 0.0), (new, new),
                      (1.0, 0.0, 0.0, 1.0), 0.0, img.GetPixelID())
  return sitk.GetArrayFromImage(out).reshape(size[1], size[0], arr.shape[-1])


def _square(spacing, path):
  if not np.isclose(spacing[0], spacing[1], rtol=1e-3):
    raise OsteoDataError(path, f'anisotropic pixel spacing {tuple(spacing)} mm; resample first')
  return float(spacing[0])


def _rigid_json(t, unit):
  return dict(angle_deg=float(np.rad2deg(t.angle)), translation=list(t.translation),
              center=list(t.center), matrix=t.homogeneous()[:2].tolist(), unit=unit)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--dxa', required=True)
  ap.add_argument('--mri', required=True)
  ap.add_argument('--aligner', required=True, help='aligner run folder (config.json + ckpts)')
  ap.add_argument('--out', required=True)
  ap.add_argument('--method', choices=METHODS, default='dense')
  args = ap.parse_args(argv)
  dxa_raw, ds = bodysim.read_scan(args.dxa)
  mri_raw, ms = bodysim.read_scan(args.mri)
  ds, ms = _square(ds, args.dxa), _square(ms, args.mri)
  model, variables, cfg, step = encoders.load_encoders(args.aligner)
  if cfg.model.encoder != 'spatial':
    raise OsteoDataError(args.aligner, f'registration needs spatial maps; this aligner is '
                                       f'{cfg.model.encoder!r}')
  dxa = _channels(dxa_raw, args.dxa, bodysim.DXA_CHANNELS, tuple(cfg.model.dxa_channels))
  mri = _channels(mri_raw, args.mri, bodysim.MRI_CHANNELS, tuple(cfg.model.mri_channels))
  s = pairs.spacing_mm(cfg)
  dxa, mri = _to_spacing(dxa, ds, s), _to_spacing(mri, ms, s)
  try:
    pairs.check_inputs(dxa[None], mri[None], dxa.shape[-1], mri.shape[-1])
  except ValueError as e:
    raise OsteoDataError(f'{args.dxa} / {args.mri}', str(e)) from None
  t0 = time.perf_counter()
  if args.method == 'mi':
    # one channel each: MRI water vs DXA tissue when present (the pair chosen on BodySim
    # training pairs by tools/registration_table.py), else the first channel
    a = list(cfg.model.mri_channels)
    b = list(cfg.model.dxa_channels)
    ci = a.index('water') if 'water' in a else 0
    cj = b.index('tissue') if 'tissue' in b else 0
    t_px = mi.register_mi(mri[..., ci], dxa[..., cj], s).transform_px
  else:
    how = cfg.data.get('normalise', 'none')    # as the aligner was trained
    fd, fm = encoders.embed(model, variables, pairs.normalise(dxa[None], how),
                            pairs.normalise(mri[None], how))
    try:
      if args.method == 'dense':
        t_cells = register.dense(fm[0], fd[0]).transform
      else:
        t_cells = register.salient(fm[0], fd[0]).transform
    except register.RegistrationError as e:
      raise OsteoDataError(args.mri, f'{args.method} registration failed: {e}') from None
    t_px = register.to_pixels(t_cells, encoders.stride(cfg))
  seconds = time.perf_counter() - t0
  t_mm = t_px.to_mm(s)
  os.makedirs(args.out, exist_ok=True)
  res = dict(dxa=os.path.abspath(args.dxa), mri=os.path.abspath(args.mri),
             aligner=os.path.abspath(args.aligner), aligner_step=int(step), method=args.method,
             direction='MRI -> DXA: p_dxa = R(angle) (p_mri - center) + center + translation',
             transform_mm=_rigid_json(t_mm, 'mm'),
             transform_px=(_rigid_json(t_mm.to_px(ds), 'px') if np.isclose(ds, ms, rtol=1e-6)
                           else None),   # MRI pixel -> DXA pixel; only for equal spacings
             spacing_mm=dict(dxa=ds, mri=ms, aligner=s), seconds=seconds)
  atomic_write_text(os.path.join(args.out, 'transform.json'), json.dumps(res, indent=1))
  moved = transfer.resample(mri_raw, ms, t_mm.inverse(), dxa_raw.shape[:2], ds)
  img = sitk.GetImageFromArray(moved.astype(np.float32), isVector=moved.ndim == 3)
  img.SetSpacing((ds, ds))
  sitk.WriteImage(img, os.path.join(args.out, 'mri_on_dxa.nii'))
  _overlay(os.path.join(args.out, 'overlay.png'), dxa_raw[..., 0],
           moved if moved.ndim == 2 else moved[..., 0])
  print(json.dumps(dict(method=args.method, angle_deg=res['transform_mm']['angle_deg'],
                        translation_mm=res['transform_mm']['translation'],
                        seconds=round(seconds, 3), out=args.out)))
  return 0


def _overlay(path, dxa, moved):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  norm = lambda a: (a - a.min()) / max(float(np.ptp(a)), 1e-12)
  d, m = norm(np.asarray(dxa, np.float32)), norm(np.asarray(moved, np.float32))
  rgb = np.stack([np.maximum(d * 0.6, m), d * 0.6, d * 0.6], -1)
  h, w = d.shape
  fig = plt.figure(figsize=(3 * w / h * 2, 6))
  ax = fig.add_axes([0, 0, 1, 1])
  ax.imshow(np.clip(rgb, 0, 1))
  ax.axis('off')
  fig.savefig(path, dpi=80)
  plt.close(fig)


if __name__ == '__main__':
  sys.exit(run_cli(main))
