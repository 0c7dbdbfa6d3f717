"""Registration and annotation transfer on BodySim pairs with a trained aligner.

Glue between the aligner (osteojax.align.train: encoders, BodySim data) and the generic
registration code (register, refine, mi, transfer, evaluation):
- `truth_transform`, `xy`: BodySim stores (row, col) pixels and dxa = R mri + t on them; the
  registration code works in (x, y) = (column, row). Both are converted here, once.
- `make_pairs`: BodySim arrays + encoder maps -> registration_eval.RegistrationPair (MRI = source,
  DXA = target; keypoints reordered to registration_eval.KEYPOINTS).
- `method_table`: the methods of the paper's Table 1 as functions pair -> Rigid2D in pixels
  (identity, Mattes MI, dense, salient, salient + refinement, keypoint floor). A map method
  that fails (RegistrationError) falls back to the identity and is counted in `failures`.
- `train_refiner`: the refinement regressor trained on training pairs aligned by the salient
  method (the paper's recipe), through refine.train / lib.fit.
- `transfer_masks`: DXA masks moved onto each MRI by a method's transforms (nearest).
"""
from __future__ import annotations

import collections

import numpy as np

from osteojax.align import encoders, mi, pairs, refine, register, registration_eval, transfer

from osteojax.align.rigid import Rigid2D
from osteojax.align.synthetic import unit_rows
from osteojax.data import bodysim

STRIDE = 8   # the paper's encoder (three 2 x 2 max-poolings); encoders.stride(config) in general
# bodysim.KEYPOINTS order -> registration_eval.KEYPOINTS order
KP_ORDER = [bodysim.KEYPOINTS.index(k) for k in registration_eval.KEYPOINTS]


def xy(points_rc) -> np.ndarray:
  """(row, col) points [..., 2] -> (x, y) = (col, row)."""
  return np.asarray(points_rc, np.float64)[..., ::-1]


def truth_transform(matrix_mri_to_dxa) -> Rigid2D:
  """BodySim's 2 x 3 (row, col) matrix -> the MRI -> DXA Rigid2D in (x, y) pixels."""
  m = np.asarray(matrix_mri_to_dxa, np.float64)
  swap = np.array([[0.0, 1.0], [1.0, 0.0]])
  return Rigid2D.from_matrix(swap @ m[:, :2] @ swap, swap @ m[:, 2])


def known_alignments(data: dict) -> list:
  """The MRI -> DXA transform (Rigid2D, pixels) of every pair of a load_pairs dict: BodySim's
  truth, or for pairs without one (a manifest) the least-squares rigid fit of the annotated
  keypoints. ValueError when neither is there."""
  if 'matrix_mri_to_dxa' in data:
    return [truth_transform(m) for m in data['matrix_mri_to_dxa']]
  kd, km = np.asarray(data['keypoints_dxa'], float), np.asarray(data['keypoints_mri'], float)
  if not (np.isfinite(kd).all() and np.isfinite(km).all()):
    raise ValueError('these pairs have no alignment truth and not every pair has keypoints '
                     '(dxa_keypoints / mri_keypoints in the manifest)')
  return [register.keypoint_floor(xy(a)[KP_ORDER], xy(b)[KP_ORDER]) for a, b in zip(km, kd)]


def embed_pairs(model, variables, config, data: dict, batch_size: int = 32):
  """Encoder maps of a load_pairs dict with the aligner's channels: (dxa maps, mri maps)."""
  dxa, mri = pairs.select_channels(data, config)
  return encoders.embed(model, variables, dxa, mri, batch_size)


def make_pairs(data: dict, dxa_maps=None, mri_maps=None) -> list:
  """RegistrationPairs (MRI source, DXA target) of a load_pairs dict; extra = dict(index,
  truth (Rigid2D, pixels: `known_alignments`), id)."""
  pairs, ts = [], known_alignments(data)
  for i in range(len(data['dxa'])):
    pairs.append(registration_eval.RegistrationPair(
        src_kp=xy(data['keypoints_mri'][i])[KP_ORDER],
        tgt_kp=xy(data['keypoints_dxa'][i])[KP_ORDER],
        src_map=None if mri_maps is None else mri_maps[i],
        tgt_map=None if dxa_maps is None else dxa_maps[i],
        src_image=data['mri'][i], tgt_image=data['dxa'][i],
        extra=dict(index=i, id=data['ids'][i],
                   truth=ts[i])))
  return pairs


# ------------------------------------------------------------------------------------ methods
MI_CHANNELS = dict(mri=bodysim.MRI_CHANNELS, dxa=bodysim.DXA_CHANNELS)


def mi_method(spacing_mm: float, mri_channel: str = 'fat', dxa_channel: str = 'tissue',
              seed: int = 0):
  """Mattes MI on one MRI channel vs one DXA channel (moments initialisation)."""
  ci = bodysim.MRI_CHANNELS.index(mri_channel)
  cj = bodysim.DXA_CHANNELS.index(dxa_channel)

  def f(p):
    return mi.register_mi(p.src_image[..., ci], p.tgt_image[..., cj], spacing_mm,
                          seed=seed).transform_px
  return f


def choose_on_pairs(candidates: dict, pairs, spacing_mm: float) -> tuple:
  """The key of `candidates` ({key: pair -> Rigid2D}) with the lowest mean keypoint error on
  `pairs` (training pairs, never the test pairs). -> (best key, {key: mean cm})."""
  e, _, _ = registration_eval.run_methods(pairs, candidates, spacing_mm, warmup=False)
  scores = {k: float(np.mean(v)) for k, v in e.items()}
  return min(scores, key=scores.get), scores


def choose_mi_channels(pairs, spacing_mm: float) -> tuple[tuple[str, str], dict]:
  """The (MRI, DXA) channel pair of Mattes MI with the lowest mean keypoint error on `pairs`.
  -> (best, {'mri/dxa': mean cm})."""
  best, scores = choose_on_pairs({f'{a}/{b}': mi_method(spacing_mm, a, b)
                                  for a in bodysim.MRI_CHANNELS for b in bodysim.DXA_CHANNELS},
                                 pairs, spacing_mm)
  return tuple(best.split('/')), scores


SALIENT_RATIOS = (0.8, 0.9, 0.95, 0.98, 0.99, 1.0)


def choose_salient_ratio(pairs, spacing_mm: float, ratios=SALIENT_RATIOS,
                         stride: int = STRIDE, **salient_kw) -> tuple[float, dict]:
  """Lowe's ratio for the salient method with the lowest mean keypoint error on `pairs`
  (training pairs, never the test pairs; a failed registration counts as the identity).

  The best ratio depends on how distinct the aligner's cells are: a strict ratio keeps few
  matches, a loose one many wrong ones. salient_kw: the salient method's other arguments.
  -> (best, {ratio: mean cm})."""
  return choose_on_pairs({r: method_table(spacing_mm, salient_kw=dict(salient_kw, ratio=r),
                                          stride=stride)['salient']
                          for r in ratios}, pairs, spacing_mm)


def method_table(spacing_mm: float, refine_fn=None, mi_channels=('fat', 'tissue'),
                 failures: collections.Counter | None = None, dense_kw=None,
                 salient_kw=None, stride: int = STRIDE, refine_on: str = 'maps',
                 normalise: str = 'minmax') -> dict:
  """{name: pair -> Rigid2D (MRI px -> DXA px)} in Table 1 order; stride: image pixels per
  map cell of the encoder (encoders.stride). refine_on: 'maps' (a refiner of feature maps,
  train_refiner) or 'image' (the paper's: images normalised as `normalise`,
  train_image_refiner)."""
  failures = collections.Counter() if failures is None else failures
  dense_kw, salient_kw = dict(dense_kw or {}), dict(salient_kw or {})

  def guarded(name, f):
    def g(p):
      try:
        return f(p)
      except register.RegistrationError:
        failures[name] += 1
        return Rigid2D.identity()
    return g

  def salient_cells(p):
    return register.salient(p.src_map, p.tgt_map, **salient_kw).transform

  out = {
      'identity': lambda p: register.identity(),
      'mattes_mi': mi_method(spacing_mm, *mi_channels),
      'dense': guarded('dense', lambda p: register.to_pixels(
          register.dense(p.src_map, p.tgt_map, **dense_kw).transform, stride)),
      'salient': guarded('salient', lambda p: register.to_pixels(salient_cells(p), stride)),
  }
  if refine_fn is not None and refine_on == 'image':
    def refined(start):
      return lambda p: refine.refine(refine_fn, _norm(p.src_image, normalise),
                                     _norm(p.tgt_image, normalise), start(p))
    out['salient_refine'] = guarded('salient_refine', refined(out['salient']))
    out['dense_refine'] = guarded('dense_refine', refined(out['dense']))
  elif refine_fn is not None:
    out['salient_refine'] = guarded('salient_refine', lambda p: register.to_pixels(
        refine.refine(refine_fn, p.src_map, p.tgt_map, salient_cells(p)), stride))
  out['floor'] = lambda p: register.keypoint_floor(p.src_kp, p.tgt_kp)
  return out


# ------------------------------------------------------------------------------------ refiner
def _norm(image, how: str):
  return pairs.normalise(np.asarray(image, np.float32)[None], how)[0]


def train_image_refiner(config, workdir: str, data: dict, n: int = 50,
                        normalise: str = 'minmax'):
  """The paper's refiner at image resolution on the first n pairs of a load_pairs dict, each
  through its known alignment (`known_alignments`: BodySim's truth, or the rigid fit of annotated
  keypoints): MRI image (source) beside the DXA image warped onto it. -> (refine_fn on images
  in pixels, info dict)."""
  n = min(n, len(data['dxa']))
  if n < 2:
    raise ValueError(f'the image refiner needs at least 2 aligned pairs, got {n}')
  mri = pairs.normalise(np.asarray(data['mri'][:n], np.float32), normalise)
  dxa = pairs.normalise(np.asarray(data['dxa'][:n], np.float32), normalise)
  center = register.map_center(mri.shape[1:])
  params = np.stack([refine.to_params(t, center) for t in known_alignments(data)[:n]])
  model, variables = refine.train(config, workdir, mri, dxa, params)
  info = dict(input='image', pairs=int(n), steps=int(config.steps),
              aligned_by='truth' if 'matrix_mri_to_dxa' in data else 'keypoint fit',
              perturb=config.perturb.to_dict())
  return refine.make_refine_fn(model, variables, config), info


def train_refiner(config, workdir: str, mri_maps, dxa_maps, pairs: int = 50,
                  min_inliers: int = 10, salient_kw=None):
  """Refinement regressor on the first `pairs` training pairs the salient method (with
  salient_kw) aligns (>= min_inliers LMedS inliers). -> (refine_fn, info dict)."""
  params, kept = refine.salient_aligned(mri_maps, dxa_maps, min_inliers=min_inliers,
                                        **dict(salient_kw or {}))
  if len(kept) < 2:
    raise ValueError(f'the salient method aligned only {len(kept)} training pairs')
  params, kept = params[:pairs], kept[:pairs]
  model, variables = refine.train(config, workdir, mri_maps[kept], dxa_maps[kept], params)
  info = dict(pairs=int(len(kept)), tried=int(len(mri_maps)), min_inliers=min_inliers,
              steps=int(config.steps), perturb=config.perturb.to_dict())
  return refine.make_refine_fn(model, variables, config), info


# ------------------------------------------------------------------------------------ transfer
def transfer_masks(dxa_masks, transforms, mri_hw) -> np.ndarray:
  """DXA label masks [N, H, W] onto the MRI grids through MRI -> DXA transforms (pixels)."""
  return np.stack([transfer.mask_to_source(m, t, mri_hw)
                   for m, t in zip(dxa_masks, transforms)]).astype(np.int32)


# ------------------------------------------------------------------------------------ ceiling
def keypoint_geometry_similarity(data: dict) -> np.ndarray:
  """Retrieval reference for BodySim: [N, N] similarity (rows DXA, columns MRI) of nearest
  neighbours on the subject's keypoint geometry as each scan shows it.

  Each scan's five truth keypoints (hips, shoulders, S1) are rounded to its pixel grid (the
  resolution of the scale in use) and described by their ten pairwise distances, which a rigid
  map between the scans leaves unchanged; similarity = minus the Euclidean distance between a
  DXA and an MRI description. The two descriptions of one subject differ by the joint jitter
  between the scans and the rounding. This is what a perfect landmark detector would retrieve
  with; it is not an upper bound of what the images allow (the outline, fat and organs are
  shared too), so results are read as a fraction of it, not a ceiling that cannot be passed.
  """
  def describe(kp):
    k = np.rint(np.asarray(kp, np.float64))                        # [N, 5, 2] pixels
    i, j = np.triu_indices(k.shape[1], 1)
    return np.linalg.norm(k[:, i] - k[:, j], axis=-1)              # [N, 10]
  d, m = describe(data['keypoints_dxa']), describe(data['keypoints_mri'])
  return -np.linalg.norm(d[:, None, :] - m[None, :, :], axis=-1)


# ------------------------------------------------------------------------------------ diagnosis
def placement_check(dxa_maps, mri_maps, truths, stride: int = STRIDE) -> dict:
  """Where the aligner's own similarity puts each MRI map on its DXA map, against the truth.

  For every pair: the valid placement (MRI map wholly inside the DXA map, as in training) of
  the strongest correlation (osteojax.align.correlation), and the true placement of the MRI
  map's cell (0, 0) (truth in cells, rotation ignored: |theta| <= 5 degrees). -> fractions of
  pairs within 0.5 / 1 cell, mean distance (cells), the median signed offset (rows, columns;
  found - true, in cells: an aligner that settled on a wrong correspondence puts every pair
  about the same distance off), the fraction peaking in the top row, and the mean spread
  (max - min) of the correlation over placements.
  """
  import jax.numpy as jnp

  from osteojax.align import correlation

  dist, off, top, spread = [], [], [], []
  for d, m, t in zip(dxa_maps, mri_maps, truths):
    c = np.asarray(correlation.correlation_maps_fft(jnp.asarray(d[None]),
                                                    jnp.asarray(m[None])))[0, 0]
    iy, ix = np.unravel_index(np.argmax(c), c.shape)
    cells = register.to_cells(t, stride)
    tx, ty = cells.apply([[0.0, 0.0]])[0]
    dist.append(float(np.hypot(ix - tx, iy - ty)))
    off.append((iy - ty, ix - tx))
    top.append(iy == 0)
    spread.append(float(c.max() - c.min()))
  dist = np.array(dist)
  return dict(pairs=len(dist), stride_px=int(stride), within_half_cell=float(np.mean(dist <= 0.5)),
              within_one_cell=float(np.mean(dist <= 1.0)), mean_distance_cells=float(dist.mean()),
              median_offset_cells=[float(v) for v in np.median(np.array(off), axis=0)],
              peak_in_top_row=float(np.mean(top)), mean_correlation_spread=float(np.mean(spread)))


def cell_match_check(dxa_maps, mri_maps, truths, stride: int = STRIDE, ks=(1, 10)) -> dict:
  """How distinct the aligner's single cells are, which the salient method rests on (the
  correlation, summed over the whole map, does not need it).

  For every MRI cell whose true position (truth in cells, as placement_check) lies on the DXA
  map: whether one of its k most similar DXA cells (cosine) is within one cell of that position
  in both axes, and the rank of the true position's nearest cell among all DXA cells as a
  fraction (0: the most similar; about 0.5: no better than chance). -> pairs, stride_px,
  top_k_correct {k: mean fraction over pairs}, chance {k: the same for a random ranking},
  median_true_rank (mean over pairs of the median over cells).
  """
  ks = tuple(int(k) for k in ks)
  hits, chance, ranks = {k: [] for k in ks}, {k: [] for k in ks}, []
  for d, m, t in zip(dxa_maps, mri_maps, truths):
    d, m = np.asarray(d, np.float64), np.asarray(m, np.float64)
    hd, wd, c = d.shape
    h, w = m.shape[:2]
    sim = unit_rows(m.reshape(-1, c)) @ unit_rows(d.reshape(-1, c)).T      # [h w, hd wd]
    src = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1).reshape(-1, 2).astype(float)
    cells = register.to_cells(t, stride)
    true = cells.apply(src)                                          # (x, y) on the DXA map
    on = ((true[:, 0] > -0.5) & (true[:, 0] < wd - 0.5) & (true[:, 1] > -0.5)
          & (true[:, 1] < hd - 0.5))
    if not on.any():
      continue
    sim, true = sim[on], true[on]
    tx, ty = np.arange(hd * wd) % wd, np.arange(hd * wd) // wd
    near = ((np.abs(tx[None] - true[:, :1]) <= 1) & (np.abs(ty[None] - true[:, 1:]) <= 1))
    order = np.argsort(-sim, axis=1)
    for k in ks:
      hits[k].append(np.take_along_axis(near, order[:, :k], 1).any(1).mean())
      chance[k].append(np.minimum(1.0, k * near.sum(1) / (hd * wd)).mean())
    ti = (np.clip(np.rint(true[:, 1]), 0, hd - 1) * wd + np.clip(np.rint(true[:, 0]), 0, wd - 1))
    s_true = sim[np.arange(len(sim)), ti.astype(int)]
    ranks.append(float(np.median((sim > s_true[:, None]).sum(1) / (hd * wd))))
  return dict(pairs=len(ranks), stride_px=int(stride),
              top_k_correct={k: float(np.mean(v)) for k, v in hits.items()},
              chance={k: float(np.mean(v)) for k, v in chance.items()},
              median_true_rank=float(np.mean(ranks)))


def cell_match_sentence(check: dict) -> str:
  """One line of a cell_match_check result, for the Markdown outputs."""
  parts = [f'{check["top_k_correct"][k]:.1%} among its {k} most similar DXA cells (chance '
           f'{check["chance"][k]:.1%})' for k in check['top_k_correct']]
  return ('how distinct single cells are (what the salient method matches): an MRI cell\'s '
          'true position (within one cell) is ' + ', '.join(parts) + '; the true cell ranks at '
          f'{check["median_true_rank"]:.2f} of all DXA cells (median; 0 the most similar, '
          f'0.5 chance).')


def placement_sentence(placement: dict) -> str:
  """One line of a placement_check result, for the Markdown outputs."""
  return (f'where the aligner\'s own correlation (valid placements, as in training) puts each '
          f'MRI map on its DXA map: {placement["within_one_cell"]:.0%} within one cell '
          f'({placement.get("stride_px", STRIDE)} px) of '
          f'the true placement, mean distance {placement["mean_distance_cells"]:.2f} cells'
          + (' (median offset {:+.1f} rows, {:+.1f} columns)'.format(
              *placement['median_offset_cells']) if 'median_offset_cells' in placement else '')
          + f', peak in the top row for {placement["peak_in_top_row"]:.0%} of the pairs.')
