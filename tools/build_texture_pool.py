"""Build the texture pool {original, TF1..TF4} of every ROI in a manifest.

  python tools/build_texture_pool.py --manifest rois.csv --out pools/ [--binWidth 25]
      [--kernelRadius 1] [--maskedKernel true] [--batch-size 4] [--keep-going]

Input manifest (CSV): columns roi_id, path (ROI image, NIfTI/any SimpleITK format, HU),
mask_path (ROI mask, label > 0 = vertebral body); other columns are ignored.
Output: <out>/<roi_id>.npy, float32 [5, D, H, W] = normalize_pool(original, GLCM maps)
(channel order osteojax.texture.pool.POOL_CHANNELS), a sidecar <out>/<roi_id>.json with its
cache key, and <out>/pool_manifest.csv (roi_id, pool_path, settings_hash, content_hash).

Cache: key = sha256(image file bytes, mask file bytes, settings_hash), where settings_hash
covers the GLCM settings and the normalisation constants.  An ROI whose sidecar holds the
same key is skipped, so a second run computes and writes nothing.  Writes are atomic (temp
file + os.replace; the sidecar is replaced after the array), so a killed run leaves no
corrupt entry and is resumed by running again; stale temp files are removed.
Errors (unreadable image or mask, shape mismatch, empty mask, NaN voxels, missing manifest
columns, too many gray levels for exact int32 sums) are one line naming the file; the exit
status is non-zero (2 for manifest errors, 1 for ROI errors).  Files are hashed and decoded
in a thread pool ahead of the compute, which batches ROIs of one bucket shape through the
jitted, vmapped GLCM function.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import csv
import hashlib
import json
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from osteojax.texture import pool as pool_lib  # noqa: E402
from osteojax.texture.settings import GLCMSettings  # noqa: E402

REQUIRED_COLUMNS = ('roi_id', 'path', 'mask_path')
MANIFEST_NAME = 'pool_manifest.csv'
TMP_TAG = '.tmp-'


class RoiError(Exception):
  """A problem with one ROI's files; str() is the one-line message."""


def _bool(s: str) -> bool:
  if s.lower() in ('1', 'true', 'yes'):
    return True
  if s.lower() in ('0', 'false', 'no'):
    return False
  raise argparse.ArgumentTypeError(f'expected true/false, got {s!r}')


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--manifest', required=True, help='input CSV: roi_id, path, mask_path')
  p.add_argument('--out', required=True, help='output directory')
  p.add_argument('--binWidth', type=float, default=25.0)
  p.add_argument('--binCount', type=int, default=None)
  p.add_argument('--kernelRadius', type=int, default=1)
  p.add_argument('--maskedKernel', type=_bool, default=True)
  p.add_argument('--force2D', type=_bool, default=False)
  p.add_argument('--force2Ddimension', type=int, default=0)
  p.add_argument('--symmetricalGLCM', type=_bool, default=True)
  p.add_argument('--weightingNorm', default=None)
  p.add_argument('--batch-size', type=int, default=4, help='ROIs per vmapped batch')
  p.add_argument('--chunk', type=int, default=32, help='ROIs read ahead per compute round')
  p.add_argument('--workers', type=int, default=2, help='reader threads')
  p.add_argument('--keep-going', action='store_true', help='skip bad ROIs instead of stopping')
  p.add_argument('--no-progress', action='store_true')
  return p.parse_args(argv)


def read_manifest(path: str) -> List[Dict[str, str]]:
  try:
    with open(path, newline='') as f:
      reader = csv.DictReader(f)
      rows = list(reader)
      columns = reader.fieldnames or []
  except OSError as e:
    raise SystemExit(f'error: cannot read manifest {path}: {e.strerror}')
  missing = [c for c in REQUIRED_COLUMNS if c not in columns]
  if missing:
    raise SystemExit(f'error: manifest {path} lacks column(s): {", ".join(missing)} '
                     f'(has: {", ".join(columns) or "none"})')
  ids = [r['roi_id'] for r in rows]
  dup = sorted({i for i in ids if ids.count(i) > 1})
  if dup:
    raise SystemExit(f'error: manifest {path} has duplicate roi_id(s): {", ".join(dup[:5])}')
  bad = [i for i in ids if not i or os.sep in i or i.startswith('.')]
  if bad:
    raise SystemExit(f'error: manifest {path} has invalid roi_id(s): {bad[:5]}')
  return rows


def file_digest(path: str, what: str) -> str:
  h = hashlib.sha256()
  try:
    with open(path, 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        h.update(block)
  except OSError as e:
    raise RoiError(f'error: cannot read {what} {path}: {e.strerror}')
  return h.hexdigest()


def content_key(row: Dict[str, str], settings_hash: str) -> str:
  h = hashlib.sha256()
  h.update(file_digest(row['path'], 'image').encode())
  h.update(file_digest(row['mask_path'], 'mask').encode())
  h.update(settings_hash.encode())
  return h.hexdigest()


def load_roi(row: Dict[str, str], settings: GLCMSettings):
  """-> (image float32 [D,H,W], mask uint8, spacing per array axis); RoiError if invalid."""
  import SimpleITK as sitk
  try:
    img = sitk.ReadImage(row['path'])
  except RuntimeError:
    raise RoiError(f'error: unreadable image {row["path"]} (roi {row["roi_id"]})')
  try:
    msk = sitk.ReadImage(row['mask_path'])
  except RuntimeError:
    raise RoiError(f'error: unreadable mask {row["mask_path"]} (roi {row["roi_id"]})')
  if img.GetNumberOfComponentsPerPixel() != 1:
    raise RoiError(f'error: image {row["path"]} is not scalar')
  image = sitk.GetArrayFromImage(img)
  mask = sitk.GetArrayFromImage(msk)
  if image.shape != mask.shape:
    raise RoiError(f'error: mask {row["mask_path"]} shape {mask.shape} differs from image '
                   f'{row["path"]} shape {image.shape}')
  if np.issubdtype(image.dtype, np.floating) and np.isnan(image).any():
    raise RoiError(f'error: image {row["path"]} has {int(np.isnan(image).sum())} NaN voxels')
  roi = mask > 0
  if not roi.any():
    raise RoiError(f'error: empty mask {row["mask_path"]} (no voxel > 0)')
  try:
    pool_lib.check_int32_range(pool_lib.max_gray_level(image, roi, settings), settings)
  except ValueError as e:
    raise RoiError(f'error: image {row["path"]}: {e}')
  spacing = tuple(float(s) for s in img.GetSpacing())[::-1]
  return image.astype(np.float32), roi.astype(np.uint8), spacing


def atomic_write(path: str, write) -> None:
  """write(file_object) into a temp file beside `path`, then os.replace it into place."""
  d, base = os.path.split(path)
  fd, tmp = tempfile.mkstemp(prefix=base + TMP_TAG, dir=d)
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def sidecar_key(out: str, roi_id: str) -> Optional[str]:
  try:
    with open(os.path.join(out, roi_id + '.json')) as f:
      return json.load(f).get('key')
  except (OSError, ValueError):
    return None


def write_entry(out: str, roi_id: str, pool: np.ndarray, meta: dict) -> None:
  atomic_write(os.path.join(out, roi_id + '.npy'), lambda f: np.save(f, pool))
  atomic_write(os.path.join(out, roi_id + '.json'),
               lambda f: f.write(json.dumps(meta, sort_keys=True).encode()))


def write_manifest(out: str, rows: List[Dict[str, str]]) -> bool:
  """Writes pool_manifest.csv atomically; returns False if it was already identical."""
  path = os.path.join(out, MANIFEST_NAME)
  lines = ['roi_id,pool_path,settings_hash,content_hash']
  lines += [f'{r["roi_id"]},{r["pool_path"]},{r["settings_hash"]},{r["content_hash"]}'
            for r in rows]
  text = '\n'.join(lines) + '\n'
  try:
    with open(path) as f:
      if f.read() == text:
        return False
  except OSError:
    pass
  atomic_write(path, lambda f: f.write(text.encode()))
  return True


def main(argv=None) -> int:
  a = parse_args(argv)
  try:
    settings = GLCMSettings(binWidth=a.binWidth, binCount=a.binCount,
                            kernelRadius=a.kernelRadius, maskedKernel=a.maskedKernel,
                            force2D=a.force2D, force2Ddimension=a.force2Ddimension,
                            symmetricalGLCM=a.symmetricalGLCM, weightingNorm=a.weightingNorm)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  try:
    rows = read_manifest(a.manifest)
  except SystemExit as e:
    print(e.code, file=sys.stderr)
    return 2
  os.makedirs(a.out, exist_ok=True)
  for name in os.listdir(a.out):                 # leftovers of a killed run
    if TMP_TAG in name:
      os.remove(os.path.join(a.out, name))
  settings_hash = pool_lib.pool_settings_hash(settings)

  from tqdm import tqdm
  bar = tqdm(total=len(rows), unit='roi', disable=a.no_progress, file=sys.stderr)
  done: Dict[str, dict] = {}
  errors: List[str] = []
  computed = cached = voxels = 0
  t_start = time.perf_counter()

  def prepare(row):
    key = content_key(row, settings_hash)
    npy = os.path.join(a.out, row['roi_id'] + '.npy')
    if sidecar_key(a.out, row['roi_id']) == key and os.path.exists(npy):
      return row, key, None
    return row, key, load_roi(row, settings)

  with futures.ThreadPoolExecutor(max(1, a.workers)) as ex:
    for c0 in range(0, len(rows), a.chunk):
      todo = []
      for fut in [ex.submit(prepare, r) for r in rows[c0:c0 + a.chunk]]:
        try:
          row, key, roi = fut.result()
        except RoiError as e:
          errors.append(str(e))
          print(str(e), file=sys.stderr)
          if not a.keep_going:
            bar.close()
            return 1
          bar.update(1)
          continue
        if roi is None:
          cached += 1
          done[row['roi_id']] = dict(key=key)
          bar.update(1)
        else:
          todo.append((row, key, roi))
      if not todo:
        continue
      pools = pool_lib.texture_pools([t[2] for t in todo], settings, a.batch_size)
      for (row, key, roi), pool in zip(todo, pools):
        meta = dict(key=key, roi_id=row['roi_id'], image=row['path'], mask=row['mask_path'],
                    shape=list(pool.shape), channels=list(pool_lib.POOL_CHANNELS),
                    settings=settings.as_dict(), normalization=pool_lib.normalization_params())
        write_entry(a.out, row['roi_id'], pool.astype(np.float32), meta)
        done[row['roi_id']] = dict(key=key)
        computed += 1
        voxels += int(np.prod(pool.shape[1:]))
      bar.update(len(todo))
      dt = max(time.perf_counter() - t_start, 1e-9)
      bar.set_postfix(vox_per_s=f'{voxels / dt:.3g}', computed=computed, cached=cached)
  bar.close()

  manifest_rows = [dict(roi_id=r['roi_id'], pool_path=os.path.join(a.out, r['roi_id'] + '.npy'),
                        settings_hash=settings_hash, content_hash=done[r['roi_id']]['key'])
                   for r in rows if r['roi_id'] in done]
  write_manifest(a.out, manifest_rows)
  dt = time.perf_counter() - t_start
  print(f'texture pool: {computed} computed, {cached} cached, {len(errors)} failed; '
        f'{computed / dt:.2f} ROIs/s, {voxels / dt:.3g} voxels/s', file=sys.stderr)
  return 1 if errors else 0


if __name__ == '__main__':
  sys.exit(main())
