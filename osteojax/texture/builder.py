"""The texture-pool builder: manifest rows -> cached, resumable pool files.

Output: <out>/<roi_id>.npy, float32 [5, D, H, W] = normalize_pool(original, GLCM maps)
(channel order osteojax.texture.pool.POOL_CHANNELS), a sidecar <out>/<roi_id>.json with its
cache key, and <out>/pool_manifest.csv (roi_id, pool_path, settings_hash, content_hash).

Cache: key = sha256(image file bytes, mask file bytes, settings_hash), where settings_hash
covers the GLCM settings and the normalisation constants. An ROI whose sidecar holds the same
key is skipped, so a second run computes and writes nothing. Writes are atomic (temp file +
os.replace; the sidecar is replaced after the array), so a killed run leaves no corrupt entry
and is resumed by running again; stale temp files are removed. Files are hashed and decoded in
a thread pool ahead of the compute, which batches ROIs of one bucket shape through the jitted,
vmapped GLCM function.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import csv
import hashlib
import json
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from osteojax import progress as prog
from osteojax.data import io
from osteojax.data.io import TMP_TAG, atomic_write  # noqa: F401 (TMP_TAG: tools, tests)
from osteojax.texture import pool as pool_lib
from osteojax.texture.settings import GLCMSettings

REQUIRED_COLUMNS = ('roi_id', 'path', 'mask_path')
MANIFEST_NAME = 'pool_manifest.csv'


class RoiError(Exception):
  """A problem with one ROI's files; str() is the one-line message."""


class ManifestError(Exception):
  """A problem with the input manifest; str() is the one-line message."""


def read_manifest(path: str) -> List[Dict[str, str]]:
  """Rows of a pool input manifest; relative image paths are resolved against its folder."""
  try:
    with open(path, newline='', encoding='utf-8-sig') as f:
      reader = csv.DictReader(f)
      rows = list(reader)
      columns = reader.fieldnames or []
  except OSError as e:
    raise ManifestError(f'error: cannot read manifest {path}: {e.strerror}')
  missing = [c for c in REQUIRED_COLUMNS if c not in columns]
  if missing:
    raise ManifestError(f'error: manifest {path} lacks column(s): {", ".join(missing)} '
                        f'(has: {", ".join(columns) or "none"})')
  counts = collections.Counter(r['roi_id'] for r in rows)
  dup = sorted(i for i, n in counts.items() if n > 1)
  if dup:
    raise ManifestError(f'error: manifest {path} has duplicate roi_id(s): {", ".join(dup[:5])}')
  bad = [i for i in counts if not i or os.sep in i or i.startswith('.')]
  if bad:
    raise ManifestError(f'error: manifest {path} has invalid roi_id(s): {bad[:5]}')
  base = os.path.dirname(os.path.abspath(path))
  for r in rows:
    for c in ('path', 'mask_path'):
      r[c] = os.path.join(base, r[c])     # no-op for absolute paths
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
  """-> (image float32 [D,H,W], mask uint8, spacing per array axis); RoiError if invalid.

  Reading and checks are osteojax.data.io's (truncated/corrupt files, NaN voxels, empty masks).
  """
  try:
    img = io.read_image(row['path'])
    image = np.array(io.check_ct(img, row['path']))
    msk = io.read_image(row['mask_path'])
    mask = sitk.GetArrayFromImage(io.check_mask(msk, row['mask_path']))
  except io.OsteoDataError as e:
    raise RoiError(f'error: {e} (roi {row["roi_id"]})')
  if image.shape != mask.shape:
    raise RoiError(f'error: mask {row["mask_path"]} shape {mask.shape} differs from image '
                   f'{row["path"]} shape {image.shape}')
  roi = mask > 0
  try:
    pool_lib.check_int32_range(pool_lib.max_gray_level(image, roi, settings), settings)
  except ValueError as e:
    raise RoiError(f'error: image {row["path"]}: {e}')
  spacing = tuple(float(s) for s in img.GetSpacing())[::-1]
  return image.astype(np.float32), roi.astype(np.uint8), spacing


def sidecar_key(out: str, roi_id: str) -> Optional[str]:
  try:
    with open(os.path.join(out, roi_id + '.json'), encoding='utf-8') as f:
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
    with open(path, encoding='utf-8') as f:
      if f.read() == text:
        return False
  except OSError:
    pass
  atomic_write(path, lambda f: f.write(text.encode()))
  return True


def build_pool(rows: List[Dict[str, str]], out: str, settings: GLCMSettings,
               batch_size: int = 4, chunk: int = 128, workers: int = 2,
               keep_going: bool = False, progress: bool = True) -> int:
  """Compute (or reuse) the pool of every row into `out`; returns 0, or 1 if an ROI failed.

  rows: from read_manifest (roi_id, path, mask_path). Errors are printed as one line each.
  """
  os.makedirs(out, exist_ok=True)
  for name in os.listdir(out):                 # leftovers of a killed run
    if TMP_TAG in name:
      os.remove(os.path.join(out, name))
  settings_hash = pool_lib.pool_settings_hash(settings)

  bar = prog.bar(total=len(rows), desc='texture pool', unit='roi', disable=not progress)
  done: Dict[str, dict] = {}
  errors: List[str] = []
  computed = cached = voxels = 0
  t_start = time.perf_counter()

  def prepare(row):
    key = content_key(row, settings_hash)
    npy = os.path.join(out, row['roi_id'] + '.npy')
    if sidecar_key(out, row['roi_id']) == key and os.path.exists(npy):
      return row, key, None
    return row, key, load_roi(row, settings)

  with futures.ThreadPoolExecutor(max(1, workers)) as ex:
    for c0 in range(0, len(rows), chunk):
      todo = []
      for fut in [ex.submit(prepare, r) for r in rows[c0:c0 + chunk]]:
        try:
          row, key, roi = fut.result()
        except RoiError as e:
          errors.append(str(e))
          print(str(e), file=sys.stderr)
          if not keep_going:
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
      pools = pool_lib.texture_pools([t[2] for t in todo], settings, batch_size)
      for (row, key, roi), pool in zip(todo, pools):
        meta = dict(key=key, roi_id=row['roi_id'], image=row['path'], mask=row['mask_path'],
                    shape=list(pool.shape), channels=list(pool_lib.POOL_CHANNELS),
                    settings=settings.as_dict(), normalization=pool_lib.normalization_params())
        write_entry(out, row['roi_id'], pool.astype(np.float32), meta)
        done[row['roi_id']] = dict(key=key)
        computed += 1
        voxels += int(np.prod(pool.shape[1:]))
      bar.update(len(todo))
      dt = max(time.perf_counter() - t_start, 1e-9)
      bar.set_postfix(vox_per_s=f'{voxels / dt:.3g}', computed=computed, cached=cached)
  bar.close()

  manifest_rows = [dict(roi_id=r['roi_id'], pool_path=os.path.join(out, r['roi_id'] + '.npy'),
                        settings_hash=settings_hash, content_hash=done[r['roi_id']]['key'])
                   for r in rows if r['roi_id'] in done]
  write_manifest(out, manifest_rows)
  dt = time.perf_counter() - t_start
  print(f'texture pool: {computed} computed, {cached} cached, {len(errors)} failed; '
        f'{computed / dt:.2f} ROIs/s, {voxels / dt:.3g} voxels/s', file=sys.stderr)
  return 1 if errors else 0


