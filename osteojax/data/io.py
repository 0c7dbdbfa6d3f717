"""Real-data input: reading CT / mask images and manifests, with one clear error per problem.

Every problem with an input file raises OsteoDataError(path, problem); `run_cli` turns it into
one line on stderr, `error: <file>: <problem>`, and exit status 2. Outputs are written through
`staged_dir`: a hidden folder next to the destination, renamed into place only when complete,
so a failed run leaves nothing behind and a re-run never sees partial files.

Images are read with SimpleITK (NIfTI, NRRD, MetaImage, ..., or a folder holding one DICOM
series) into its physical LPS space, whatever the file's own convention.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import sys
import tempfile
import zlib

import numpy as np
import pandas as pd
import SimpleITK as sitk

from osteojax.data import params as P
from osteojax.errors import ConfigError

# The real-data manifest: required and optional columns.
REAL_COLUMNS = ['patient', 'ct_path', 'mask_path', 'site', 'device', 'level', 'bmd']
OPTIONAL_COLUMNS = ['sex', 'age', 'split', 'scanner']
BMD_RANGE = (0.2, 2.5)      # g/cm2: anything outside is a unit or column mix-up
AGE_RANGE = (0.0, 120.0)


class OsteoDataError(Exception):
  """A problem with one input file: str() is '<path>: <problem>' on one line."""

  def __init__(self, path, problem):
    self.path = str(path)
    self.problem = ' '.join(str(problem).split())
    super().__init__(f'{self.path}: {self.problem}')

  def __reduce__(self):                 # raised in a worker process, re-raised in its parent
    return type(self), (self.path, self.problem)


def run_cli(main, argv=None):
  """Run main(argv); an OsteoDataError (`error: <file>: <problem>`) or a ConfigError becomes one
  line on stderr and exit status 2."""
  sitk.ProcessObject.SetGlobalWarningDisplay(False)   # ITK warnings would add stderr lines
  try:
    return main(argv)
  except (OsteoDataError, ConfigError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------------------------
# Images.

def _itk_message(err):
  """The informative last line of a SimpleITK exception, without its source location."""
  lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
  msg = lines[-1] if lines else 'unknown error'
  for tag in ('sitk::ERROR:', 'ITK ERROR:'):
    if tag in msg:
      msg = msg.split(tag, 1)[1].strip()
  return msg


def _check_nifti_data(path, reader):
  """NIfTI data must be complete and finite.

  ITK reads a truncated NIfTI without complaint (zero-filled) and turns NaN / inf into 0, so
  the file itself is streamed here: its length is checked against the header and float data
  is scanned for non-finite values.
  """
  try:
    vox_offset = int(float(reader.GetMetaData('vox_offset')))
    ndim = int(reader.GetMetaData('dim[0]'))
    dims = [int(reader.GetMetaData(f'dim[{i}]')) for i in range(1, ndim + 1)]
    bitpix = int(reader.GetMetaData('bitpix'))
    datatype = int(reader.GetMetaData('datatype'))
  except (RuntimeError, ValueError):
    return  # an unusual header: leave it to ITK
  if path.endswith('.hdr') or path.endswith('.hdr.gz'):
    return  # a two-file pair: the data lives in the .img
  need = vox_offset + int(np.prod(dims)) * bitpix // 8
  dtype = {16: 'f4', 64: 'f8'}.get(datatype)   # NIfTI float32 / float64
  opener = gzip.open if path.endswith('.gz') else open
  have, bad, rest = 0, 0, b''
  try:
    with opener(path, 'rb') as f:
      head = f.read(vox_offset)
      have = len(head)
      endian = '<' if int.from_bytes(head[:4], 'little') in (348, 540) else '>'
      while chunk := f.read(1 << 22):
        have += len(chunk)
        if dtype:
          rest += chunk
          n = len(rest) // (bitpix // 8) * (bitpix // 8)
          bad += int((~np.isfinite(np.frombuffer(rest[:n], endian + dtype))).sum())
          rest = rest[n:]
  except (EOFError, OSError, zlib.error) as e:
    raise OsteoDataError(path, f'corrupt or truncated gzip data ({e})') from None
  if have < need:
    raise OsteoDataError(path, f'truncated NIfTI: {have} bytes of data, the header needs {need}')
  if bad:
    raise OsteoDataError(path, f'{bad} NaN or infinite voxels')


def _check_slices(folder, reader, img):
  """The slices of a DICOM series must be evenly spaced along the slice normal."""
  if img.GetDimension() != 3 or img.GetSize()[2] < 3:
    return
  normal = np.asarray(img.GetDirection()).reshape(3, 3)[:, 2]
  try:
    pos = [np.array([float(v) for v in reader.GetMetaData(i, '0020|0032').split('\\')])
           for i in range(img.GetSize()[2])]
  except (RuntimeError, ValueError):
    return  # no positions to check
  steps = np.diff([p @ normal for p in pos])
  if np.abs(steps - steps.mean()).max() > 0.01 * max(abs(steps.mean()), 1e-3):
    raise OsteoDataError(folder, f'uneven DICOM slice positions (steps {steps.min():.3g} to '
                                 f'{steps.max():.3g} mm): missing or extra slices')


def _read_dicom_series(folder):
  ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
  if not ids:
    raise OsteoDataError(folder, 'folder holds no DICOM series')
  if len(ids) > 1:
    raise OsteoDataError(folder, f'folder holds {len(ids)} DICOM series; one per folder, please')
  return _read_series_files(folder, sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, ids[0]))


def _read_series_files(folder, files):
  """The image of one DICOM series' files (sorted by GDCM), its slice spacing checked."""
  reader = sitk.ImageSeriesReader()
  reader.SetFileNames(files)
  reader.MetaDataDictionaryArrayUpdateOn()
  try:
    img = reader.Execute()
  except RuntimeError as e:
    raise OsteoDataError(folder, f'cannot read DICOM series: {_itk_message(e)}') from None
  _check_slices(folder, reader, img)
  return img


def read_file(path) -> sitk.Image:
  """An image of any dimension from a file (NIfTI, NRRD, PNG, ...) or a folder holding one
  DICOM series. OsteoDataError for a missing, empty, unreadable or truncated input and for
  non-finite NIfTI data (which ITK would silently read as 0)."""
  path = str(path)
  if not os.path.exists(path):
    raise OsteoDataError(path, 'no such file or folder')
  if os.path.isdir(path):
    img = _read_dicom_series(path)
  else:
    if os.path.getsize(path) == 0:
      raise OsteoDataError(path, 'empty file (0 bytes)')
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
      reader.ReadImageInformation()
      if 'vox_offset' in reader.GetMetaDataKeys():   # NIfTI (ITK names no IO here)
        _check_nifti_data(path, reader)
      img = reader.Execute()
    except RuntimeError as e:
      raise OsteoDataError(path, f'cannot read image: {_itk_message(e)}') from None
  return img


def read_image(path) -> sitk.Image:
  """A 3-D image from a file (NIfTI, NRRD, ...) or a folder holding one DICOM series.

  Raises OsteoDataError for a missing, empty, unreadable, truncated or non-3-D input.
  A 4-D image with one volume is returned as 3-D.
  """
  path = str(path)
  img = read_file(path)
  if img.GetDimension() == 4 and img.GetSize()[3] == 1:
    img = img[:, :, :, 0]
  if img.GetDimension() != 3:
    raise OsteoDataError(path, f'expected a 3-D image, got {img.GetDimension()}-D of size '
                               f'{img.GetSize()}')
  if img.GetNumberOfComponentsPerPixel() != 1:
    raise OsteoDataError(path, f'expected one value per voxel, got '
                               f'{img.GetNumberOfComponentsPerPixel()}')
  if min(img.GetSize()) < 2:
    raise OsteoDataError(path, f'empty image: size {img.GetSize()} (need >= 2 voxels per axis)')
  return img


# ----------------------------------------------------------------------------------------------
# DICOM studies: a folder of series, one CT series picked.

MIN_SERIES_SLICES = 20     # a spine CT series; localizers, key images, single reformats fewer
AXIAL_MIN_COS = 0.9        # |slice normal . S-I axis| at least this (gantry tilt up to ~25 deg)
_TAGS = {'image_type': '0008|0008', 'orientation': '0020|0037', 'modality': '0008|0060',
         'description': '0008|103e', 'number': '0020|0011', 'uid': '0020|000e'}


def _series_reasons(s):
  """Why a series (list_dicom_series dict) is not an axial original CT series; [] if it is."""
  why = []
  if s['modality'] and s['modality'].upper() != 'CT':
    why.append(f'modality {s["modality"]}')
  kind = [v.strip().upper() for v in s['image_type'].split('\\')] if s['image_type'] else []
  if 'LOCALIZER' in kind:
    why.append('localizer')
  if kind and kind[:2] != ['ORIGINAL', 'PRIMARY']:
    why.append(f'ImageType {s["image_type"]} is not ORIGINAL\\PRIMARY')
  if s['normal'] is None:
    why.append('no ImageOrientationPatient')
  elif abs(s['normal'][2]) < AXIAL_MIN_COS:
    why.append(f'not axial (slice normal {tuple(round(v, 2) + 0.0 for v in s["normal"])})')
  if s['slices'] < MIN_SERIES_SLICES:
    why.append(f'{s["slices"]} slices < {MIN_SERIES_SLICES}')
  return why


def list_dicom_series(folder) -> list:
  """Every DICOM series in a folder and its subfolders, read from each one's first file.

  Returns dicts: folder, uid, files (GDCM order), slices, image_type, orientation, normal
  (unit (x, y, z) or None), modality, description, number ('' for an absent tag), reasons (why
  it is not an axial ORIGINAL\\PRIMARY CT series of >= MIN_SERIES_SLICES slices; [] if it is).
  """
  out = []
  for d, dirs, _ in os.walk(str(folder)):
    dirs.sort()
    for sid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(d):
      files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(d, sid))
      r = sitk.ImageFileReader()
      r.SetFileName(files[0])
      try:
        r.ReadImageInformation()
      except RuntimeError as e:
        raise OsteoDataError(files[0], f'cannot read DICOM header: {_itk_message(e)}') from None
      s = {k: (r.GetMetaData(t).strip() if r.HasMetaDataKey(t) else '') for k, t in _TAGS.items()}
      s.update(folder=d, uid=s['uid'] or sid, files=files, slices=len(files), normal=None)
      try:
        iop = [float(v) for v in s['orientation'].split('\\')]
        n = np.cross(iop[:3], iop[3:6])
        s['normal'] = tuple(float(v) for v in n / np.linalg.norm(n))
      except (ValueError, IndexError):
        pass
      s['reasons'] = _series_reasons(s)
      out.append(s)
  return out


def select_ct_series(folder):
  """(picked, all): the axial ORIGINAL\\PRIMARY CT series with the most slices (ties: lowest
  series number) among list_dicom_series(folder). A series without ImageType counts as
  original. OsteoDataError naming every series and why, when none qualifies."""
  found = list_dicom_series(folder)
  if not found:
    raise OsteoDataError(folder, 'folder holds no DICOM series')
  ok = [s for s in found if not s['reasons']]
  if not ok:
    why = '; '.join(f'{os.path.relpath(s["folder"], str(folder))} '
                    f'{s["description"] or s["uid"][-12:]}: {", ".join(s["reasons"])}'
                    for s in found)
    raise OsteoDataError(folder, f'no axial ORIGINAL\\PRIMARY CT series of >= '
                                 f'{MIN_SERIES_SLICES} slices among {len(found)}: {why}')

  def number(s):
    try:
      return float(s['number'])
    except ValueError:
      return float('inf')
  ok.sort(key=lambda s: (-s['slices'], number(s), s['folder'], s['uid']))
  return ok[0], found


def series_record(picked, found, root) -> dict:
  """JSON-ready account of a series choice: the picked series and the others with reasons."""
  def brief(s):
    return dict(folder=os.path.relpath(s['folder'], str(root)), series_uid=s['uid'],
                series_number=s['number'], description=s['description'],
                image_type=s['image_type'], slices=s['slices'])
  return dict(picked=brief(picked), candidates=len(found),
              others=[dict(brief(s), reasons=s['reasons'] or ['fewer slices than the picked'])
                      for s in found if s is not picked])


def read_ct(path):
  """(CT image, series record or None): a file as read_image does, or a DICOM folder that may
  hold several series (in it or in subfolders), of which select_ct_series picks one."""
  path = str(path)
  if not os.path.isdir(path):
    return read_image(path), None
  picked, found = select_ct_series(path)
  img = _read_series_files(picked['folder'], picked['files'])
  if img.GetDimension() != 3 or min(img.GetSize()) < 2:
    raise OsteoDataError(picked['folder'], f'expected a 3-D series, got size {img.GetSize()}')
  return img, series_record(picked, found, path)


def check_ct(img, path) -> np.ndarray:
  """Validate a CT image; returns its voxels as an array [z, y, x] (a view, do not modify).

  Raises OsteoDataError for NaN / infinite voxels or an image with one value throughout.
  """
  arr = sitk.GetArrayViewFromImage(img)
  if np.issubdtype(arr.dtype, np.floating):
    bad = ~np.isfinite(arr)
    if bad.any():
      raise OsteoDataError(path, f'{int(bad.sum())} NaN or infinite voxels')
  lo, hi = arr.min(), arr.max()
  if lo == hi:
    raise OsteoDataError(path, f'empty image: every voxel is {lo}')
  return arr


def check_mask(img, path) -> sitk.Image:
  """Validate a label mask (non-negative integers, not all zero); returns it as UInt32."""
  arr = sitk.GetArrayViewFromImage(img)
  if np.issubdtype(arr.dtype, np.floating):
    if not np.isfinite(arr).all():
      raise OsteoDataError(path, 'mask has NaN or infinite voxels')
    if (arr != np.round(arr)).any():
      raise OsteoDataError(path, 'mask has non-integer values: not a label image')
  if arr.min() < 0:
    raise OsteoDataError(path, f'mask has negative values (min {arr.min()})')
  if arr.max() == 0:
    raise OsteoDataError(path, 'empty mask: every voxel is 0 (no vertebra labelled)')
  return sitk.Cast(img, sitk.sitkUInt32)


def check_geometry(img, mask, img_path, mask_path, spacing_rtol=1e-4, origin_tol=1e-2,
                   direction_tol=1e-4):
  """The mask must lie on the image's voxel grid.

  Size must be equal; spacing within a relative spacing_rtol; origin within origin_tol voxels
  (of the image's spacing) on every axis; direction cosines within direction_tol.
  Raises OsteoDataError naming the mask and the first difference found.
  """
  def fmt(v):
    return '(' + ', '.join(f'{x:.6g}' for x in v) + ')'

  if img.GetSize() != mask.GetSize():
    raise OsteoDataError(mask_path, f'size {mask.GetSize()} differs from the CT '
                                    f'{img_path}: {img.GetSize()}')
  sp_i, sp_m = np.array(img.GetSpacing()), np.array(mask.GetSpacing())
  if (np.abs(sp_i - sp_m) > spacing_rtol * sp_i).any():
    raise OsteoDataError(mask_path, f'spacing {fmt(sp_m)} mm differs from the CT {img_path}: '
                                    f'{fmt(sp_i)}')
  o_i, o_m = np.array(img.GetOrigin()), np.array(mask.GetOrigin())
  if (np.abs(o_i - o_m) > origin_tol * sp_i).any():
    raise OsteoDataError(mask_path, f'origin {fmt(o_m)} mm differs from the CT {img_path}: '
                                    f'{fmt(o_i)}')
  d_i, d_m = np.array(img.GetDirection()), np.array(mask.GetDirection())
  if (np.abs(d_i - d_m) > direction_tol).any():
    raise OsteoDataError(mask_path, f'direction {fmt(d_m)} differs from the CT {img_path}: '
                                    f'{fmt(d_i)}')


# ----------------------------------------------------------------------------------------------
# Manifests.

def _number(text, path, line, column, lo, hi, unit):
  """text -> float (NaN if blank); OsteoDataError if not a number in [lo, hi]."""
  if text == '':
    return np.nan
  try:
    v = float(text)
  except ValueError:
    raise OsteoDataError(path, f'line {line}: {column} {text!r} is not a number') from None
  if not np.isfinite(v) or not lo <= v <= hi:
    raise OsteoDataError(path, f'line {line}: {column} {text!r} outside {lo}..{hi} {unit}')
  return v


def read_csv_table(path, required, needs: str = '', kind: str = 'file') -> pd.DataFrame:
  """A CSV of strings ('' when blank, column names stripped), checked as a whole: the file
  exists and parses, every column in `required` is there (the message names the missing ones
  and `needs`, or else the required list), and it has rows. OsteoDataError otherwise."""
  path = str(path)
  if not os.path.isfile(path):
    raise OsteoDataError(path, f'no such {kind}')
  try:
    df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    raise OsteoDataError(path, f'cannot read CSV: {" ".join(str(e).split())}') from None
  df.columns = [str(c).strip() for c in df.columns]
  missing = [c for c in required if c not in df.columns]
  if missing:
    raise OsteoDataError(path, f'missing column(s) {", ".join(missing)} '
                               f'({needs or "needs " + ", ".join(required)})')
  if len(df) == 0:
    raise OsteoDataError(path, 'no rows')
  return df


def read_real_manifest(path) -> pd.DataFrame:
  """The real-data manifest: one row per vertebra to cut.

  CSV columns: patient, ct_path, mask_path, site, device, level, bmd (DXA g/cm2, blank: no DXA),
  optional sex (F/M), age (years), split, scanner. Relative paths are taken relative to the
  manifest's folder. Returns a DataFrame with those columns (all present), paths made absolute,
  bmd / age float (NaN when blank), other columns stripped strings ('' when blank) and a
  `line` column (the CSV line number, for messages). Raises OsteoDataError on any bad row.
  """
  path = str(path)
  df = read_csv_table(path, REAL_COLUMNS)
  df = df[[c for c in REAL_COLUMNS + OPTIONAL_COLUMNS if c in df.columns]].copy()
  for c in OPTIONAL_COLUMNS:
    if c not in df:
      df[c] = ''
  for c in df.columns:
    df[c] = df[c].astype(str).str.strip()
  root = os.path.dirname(os.path.abspath(path))
  out, seen = [], {}
  for n, r in enumerate(df.to_dict('records')):
    line = n + 2
    for c in ('patient', 'ct_path', 'mask_path', 'site', 'level'):
      if r[c] == '':
        raise OsteoDataError(path, f'line {line}: empty {c}')
    if r['level'] not in P.LEVEL_INDEX:
      raise OsteoDataError(path, f'line {line}: unknown level {r["level"]!r} '
                                 f'(known: {", ".join(P.LEVELS)})')
    r['bmd'] = _number(r['bmd'], path, line, 'bmd', *BMD_RANGE, 'g/cm2')
    r['age'] = _number(r['age'], path, line, 'age', *AGE_RANGE, 'years')
    if r['device'] not in P.DEVICE_NAMES and not (r['device'] == '' and np.isnan(r['bmd'])):
      raise OsteoDataError(path, f'line {line}: unknown device {r["device"]!r} '
                                 f'(known: {", ".join(P.DEVICE_NAMES)})')
    sex = r['sex'].upper()[:1] if r['sex'].lower() in ('f', 'm', 'female', 'male') else None
    if sex is None and r['sex'] != '':
      raise OsteoDataError(path, f'line {line}: sex {r["sex"]!r} is not F or M')
    r['sex'] = sex or ''
    key = (r['patient'], r['level'])
    if key in seen:
      raise OsteoDataError(path, f'line {line}: patient {key[0]} level {key[1]} already on '
                                 f'line {seen[key]}')
    seen[key] = line
    for c in ('ct_path', 'mask_path'):
      r[c] = os.path.normpath(os.path.join(root, r[c]))
    r['line'] = line
    out.append(r)
  return pd.DataFrame(out)


# ----------------------------------------------------------------------------------------------
# Outputs.

TMP_TAG = '.tmp-'   # in the name of every temporary file below; a killed run's leftovers


@contextlib.contextmanager
def atomic_path(path):
  """Yield a temporary file name beside `path` (same folder, same extension) to write to.

  When the block succeeds the file is moved onto `path` with os.replace (atomic on one file
  system); when it fails the file is removed. So `path` is either its old self or complete,
  never half written, even if the process is killed (only a TMP_TAG file can be left).
  """
  d, base = os.path.split(os.path.abspath(str(path)))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=TMP_TAG, suffix='-' + base, dir=d)
  os.close(fd)
  umask = os.umask(0o022)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes it private; the result should not be
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def atomic_write(path, write) -> None:
  """write(binary file object) into a temporary file, fsync, then move it onto `path`."""
  with atomic_path(path) as tmp, open(tmp, 'wb') as f:
    write(f)
    f.flush()
    os.fsync(f.fileno())


def atomic_write_text(path, text: str) -> None:
  """A text file (UTF-8) written atomically."""
  atomic_write(path, lambda f: f.write(text.encode('utf-8')))

@contextlib.contextmanager
def staged_dir(out_dir, marker):
  """Yield a hidden staging folder next to out_dir; it becomes out_dir only on success.

  An existing out_dir is replaced only if it is empty or holds `marker` (this tool's output);
  otherwise OsteoDataError, before anything is written. On any exception the staging folder is
  removed and out_dir is left as it was.
  """
  out_dir = os.path.abspath(str(out_dir))
  if os.path.exists(out_dir):
    if not os.path.isdir(out_dir):
      raise OsteoDataError(out_dir, 'exists and is not a folder')
    if os.listdir(out_dir) and not os.path.exists(os.path.join(out_dir, marker)):
      raise OsteoDataError(out_dir, f'exists and is not an output of this tool (no {marker}); '
                                    f'not overwriting')
  parent, name = os.path.split(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{name}.partial-', dir=parent)
  umask = os.umask(0o022)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)   # mkdtemp makes it private; the result should not be
  try:
    yield tmp
    if os.path.exists(out_dir):
      old = f'{tmp}.old'
      os.rename(out_dir, old)
      os.rename(tmp, out_dir)
      shutil.rmtree(old)
    else:
      os.rename(tmp, out_dir)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)


def write_dicom_series(img, folder, patient='anonymous', tags=None):
  """Write a 3-D image as a CT DICOM series (one int16 file per slice) into a new folder.

  tags: optional {'gggg|eeee': value} written into every slice as well (e.g. ImageType
  '0008|0008', SeriesDescription '0008|103e'), after the ones below."""
  img = sitk.Cast(img, sitk.sitkInt16)
  os.makedirs(folder)
  digest = hashlib.sha1(sitk.GetArrayViewFromImage(img).tobytes() + patient.encode()
                        + (repr(sorted(tags.items())).encode() if tags else b''))
  uid = '1.2.826.0.1.3680043.2.1125.' + str(int(digest.hexdigest()[:24], 16))  # deterministic
  direction = img.GetDirection()
  iop = '\\'.join(f'{v:.6f}' for v in (direction[0], direction[3], direction[6],
                                       direction[1], direction[4], direction[7]))
  writer = sitk.ImageFileWriter()
  writer.KeepOriginalImageUIDOn()
  common = {'0008|0060': 'CT', '0010|0010': patient, '0010|0020': patient,
            '0020|000d': uid + '.1', '0020|000e': uid + '.2', '0020|0037': iop,
            '0018|0050': f'{img.GetSpacing()[2]:.6f}', '0008|0016': '1.2.840.10008.5.1.4.1.1.2',
            '0028|1052': '0', '0028|1053': '1', '0028|1054': 'HU', **(tags or {})}
  for k in range(img.GetSize()[2]):
    s = img[:, :, k]
    for tag, value in common.items():
      s.SetMetaData(tag, value)
    pos = img.TransformIndexToPhysicalPoint((0, 0, k))
    s.SetMetaData('0020|0032', '\\'.join(f'{v:.6f}' for v in pos))
    s.SetMetaData('0020|0013', str(k + 1))
    s.SetMetaData('0008|0018', f'{uid}.3.{k + 1}')
    writer.SetFileName(os.path.join(folder, f'slice_{k:04d}.dcm'))
    writer.Execute(s)
