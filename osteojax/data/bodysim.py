"""BodySim: generated whole-body 2-D coronal DXA / MRI pairs with known alignment truth.

Each subject is a set of analytic primitives (tapered capsules and ellipses) in a body frame in
mm (y down from the vertex, x lateral from the midline): skull, spine with a scoliotic curve,
ribs, clavicles, pelvis, femora, tibiae, humeri, forearms, a soft-tissue outline with lean and
fat layers, lungs, heart, liver, kidneys, bladder and visceral fat. Two images are rendered:

- DXA, channels (bone, tissue): *projections*: bone = density-weighted chord length through the
  bones (cortex denser than marrow), tissue = chord length through soft tissue (lungs count half),
  head to toe, 800 x 300 pixels at 2.2 mm at full scale.
- MRI, channels (fat, water): a mid-coronal *slice*: tissue classes with Dixon-like fat / water
  intensities (bone nearly invisible: dark cortex, faint marrow), a smooth multiplicative bias
  field and magnitude noise, neck to knee, 501 x 224 pixels at 2.2 mm at full scale.

The MRI field of view is a cropped, translated and slightly rotated copy of the DXA's, and the
arms and legs move between the scans (the trunk is rigid up to small joint jitter). Truth per
subject: the rigid map from MRI pixel (row, col) to DXA pixel (row, col),
`dxa = R(theta) @ mri + t`, five keypoints in both images (hip joints, shoulder joints, S1) and
label masks in both images (1 spine incl. sacrum, 2 pelvis, 3 pelvic cavity).

Every number is in PARAMS below with its source; `scale` divides the pixel counts (and multiplies
the spacing), 4 giving the CPU default (DXA 200 x 75, MRI 125 x 56 at 8.8 mm).
Output (`generate`): per split, per subject `dxa.nii` (2-component float32), `mri.nii`,
`dxa_mask.nii`, `mri_mask.nii` (uint8 labels) with spacing in mm, plus `truth_<split>.json`;
`load_pairs(dir, split)` reads them back as arrays + truth.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import SimpleITK as sitk

from osteojax.data import io
from osteojax.data.io import OsteoDataError, staged_dir
from osteojax.errors import ConfigError

MARKER = 'bodysim.json'
VERSION = 1
KEYPOINTS = ('hip_left', 'hip_right', 'shoulder_left', 'shoulder_right', 's1')
MASK_LABELS = {1: 'spine', 2: 'pelvis', 3: 'pelvic_cavity'}
DXA_CHANNELS = ('bone', 'tissue')
MRI_CHANNELS = ('fat', 'water')

# ----------------------------------------------------------------------------------------------
# Parameters. Sources: "§7" = ../shared/DATA_FACTS.md section 7 (UK Biobank DXA/MRI); "Winter" =
# Winter, Biomechanics and Motor Control of Human Movement (segment lengths as fractions of
# height H, after Drillis & Contini), from memory (unverified); FREE = no published value,
# chosen once before any model was trained; never tuned to results.
PARAMS = dict(
    # image geometry (full scale)
    dxa_shape=((800, 300), '§7 paper input size'),
    mri_shape=((501, 224), '§7 paper input size'),
    spacing_mm=(2.2, '§7 / paper Sec. 1.2: equal 2.2 mm in both modalities'),
    # population
    height_mm=((1690.0, 90.0, 1450.0, 1950.0), 'FREE: mean, sd, min, max; adult mixed sex'),
    width_sd=(0.06, 'FREE: sd of a lateral width factor (1 = average build)'),
    pelvis_width_sd=(0.06, 'FREE: sd of pelvis width relative to build'),
    limb_length_sd=(0.03, 'FREE: sd of arm / leg length factors'),
    fat_mm=((20.0, 0.45), 'FREE: subcutaneous fat thickness, log-normal median (mm), sigma'),
    bone_density_sd=(0.12, 'FREE: sd of a whole-skeleton density factor (1 = average)'),
    scoliosis_mm=(6.0, 'FREE: sd of the lateral spinal curve amplitude'),
    organ_jitter=(0.008, 'FREE: sd of organ centre offsets, fraction of H'),
    # body proportions, fractions of H from the vertex (Winter: heights above the floor
    # 0.870 chin, 0.818 shoulder, 0.630 elbow, 0.485 wrist, 0.530 hip, 0.285 knee, 0.039 ankle)
    y_chin=(0.130, 'Winter'), y_shoulder=(0.182, 'Winter'), y_hip=(0.470, 'Winter'),
    y_knee=(0.715, 'Winter'), y_ankle=(0.961, 'Winter'),
    upper_arm=(0.186, 'Winter'), forearm=(0.146, 'Winter'),
    shoulder_x=(0.110, 'Winter: biacromial breadth 0.259 H; joint centres inside it'),
    hip_x=(0.052, 'FREE: hip joint centres (Winter hip breadth 0.191 H is the outer width)'),
    y_s1=(0.425, 'FREE: S1 about 8 cm above the hip joint centres'),
    # pose (degrees from vertical, outwards positive)
    arm_abduction_deg=((5.0, 25.0), 'FREE: uniform range, DXA scan'),
    leg_abduction_deg=((0.0, 8.0), 'FREE: uniform range, DXA scan'),
    arm_move_deg=(6.0, 'FREE: sd of the arm angle change between scans (limb movement)'),
    leg_move_deg=(3.0, 'FREE: sd of the leg angle change between scans'),
    joint_jitter_mm=(3.0, 'FREE: sd of shoulder / hip joint shifts between scans (non-rigid)'),
    # placement and field of view
    dxa_vertex_mm=((30.0, 90.0), 'FREE: vertex below the DXA top edge, uniform'),
    dxa_centre_sd_mm=(10.0, 'FREE: lateral offset of the body in the DXA field'),
    mri_top=((0.115, 0.02), 'FREE + §7: MRI top edge near the neck (fraction of H: mean, sd);'
             ' 501 x 2.2 mm = 1.1 m then ends near the knee'),
    mri_centre_sd_mm=(15.0, 'FREE: lateral offset of the MRI field'),
    mri_rotation_deg=((2.0, 5.0), 'FREE: sd and clip of the in-plane rotation ("slightly")'),
    # contrast and noise
    dxa_bone_scale=(1 / 40.0, 'FREE: bone channel per mm of bone-equivalent chord'),
    dxa_tissue_scale=(1 / 300.0, 'FREE: tissue channel per mm of soft-tissue chord'),
    dxa_bone_in_tissue=(0.2, 'FREE: bone seen in the tissue channel'),
    dxa_noise=(0.01, 'FREE: Gaussian noise sd, both DXA channels'),
    mri_noise=(0.02, 'FREE: Gaussian sd before taking the magnitude (Rician-like)'),
    mri_bias=(0.2, 'FREE: bias-field amplitude (multiplicative, smooth)'),
    # MRI (fat, water) by tissue class; muscle fat rises with subject fat. FREE (Dixon-like).
    mri_tissue=(dict(background=(0.0, 0.0), fat=(0.9, 0.1), muscle=(0.06, 0.65),
                     lung=(0.02, 0.05), heart=(0.05, 0.5), liver=(0.1, 0.55),
                     kidney=(0.05, 0.8), bladder=(0.0, 0.95), cortex=(0.02, 0.03),
                     marrow=(0.35, 0.15), head=(0.3, 0.5)), 'FREE: Dixon-like contrasts'),
)
SPLIT_SIZES = {'train': 400, 'val': 50, 'test': 100}    # CPU default; FREE


def param(name):
  return PARAMS[name][0]


def geometry(scale: int = 4) -> dict:
  """Image shapes and spacing at a down-scaling factor (1 = full scale, 4 = CPU default)."""
  if int(scale) != scale or scale < 1:
    raise ConfigError(f'scale must be a positive integer, got {scale}')
  s = int(scale)
  (dh, dw), (mh, mw) = param('dxa_shape'), param('mri_shape')
  return dict(dxa_shape=(dh // s, dw // s), mri_shape=(int(round(mh / s)), mw // s),
              spacing_mm=param('spacing_mm') * s, scale=s)


# ----------------------------------------------------------------------------------------------
# Subject: anatomy in the body frame.

def sample_subject(rng: np.random.Generator) -> dict:
  """Latent parameters of one subject (build, fat, density, pose, idiosyncrasies)."""
  m, sd, lo, hi = param('height_mm')
  u = lambda r: rng.uniform(*r)
  sub = dict(
      height=float(np.clip(rng.normal(m, sd), lo, hi)),
      width=float(1 + param('width_sd') * rng.standard_normal()),
      pelvis=float(1 + param('pelvis_width_sd') * rng.standard_normal()),
      arm_len=float(1 + param('limb_length_sd') * rng.standard_normal()),
      leg_len=float(1 + param('limb_length_sd') * rng.standard_normal()),
      fat=float(param('fat_mm')[0] * np.exp(param('fat_mm')[1] * rng.standard_normal())),
      density=float(max(1 + param('bone_density_sd') * rng.standard_normal(), 0.4)),
      scoliosis=float(param('scoliosis_mm') * rng.standard_normal()),
      scoliosis_phase=float(rng.uniform(0, 2 * np.pi)),
      vertebra_jitter=rng.normal(0, 0.05, 25).tolist(),
      rib_angles=rng.normal(0, 3.0, 20).tolist(),
      organs=rng.normal(0, param('organ_jitter'), (6, 2)).tolist(),
      visceral=float(np.exp(0.3 * rng.standard_normal())),
      arms=[u(param('arm_abduction_deg')), u(param('arm_abduction_deg'))],
      legs=[u(param('leg_abduction_deg')), u(param('leg_abduction_deg'))],
  )
  return sub


def mri_pose(sub: dict, rng: np.random.Generator) -> dict:
  """The same subject at the MRI scan: limbs moved, joints jittered by a few mm."""
  j = param('joint_jitter_mm')
  return dict(arms=[a + param('arm_move_deg') * rng.standard_normal() for a in sub['arms']],
              legs=[a + param('leg_move_deg') * rng.standard_normal() for a in sub['legs']],
              joint_shift=rng.normal(0, j, (4, 2)).tolist())


def _rot(deg):
  t = np.deg2rad(deg)
  return np.array([np.sin(t), np.cos(t)])     # unit vector (x, y) from vertical, outwards +x


def anatomy(sub: dict, pose: dict | None = None) -> dict:
  """Primitives and keypoints of a subject in the body frame (mm, x lateral, y down).

  pose: None for the DXA pose, or mri_pose(...) output. Returns dict with 'bones' (list of
  (kind, geometry, density, mask_label)), 'soft' (lean/fat capsules), 'organs', 'keypoints'
  [5, 2] (x, y).
  """
  H, wf = sub['height'], sub['width']
  arms = sub['arms'] if pose is None else pose['arms']
  legs = sub['legs'] if pose is None else pose['legs']
  shift = np.zeros((4, 2)) if pose is None else np.asarray(pose['joint_shift'])
  yv = lambda f: f * H
  bones, soft, organs = [], [], []

  def cap(a, b, r0, r1=None):
    return ('capsule', (np.asarray(a, float), np.asarray(b, float), r0, r0 if r1 is None else r1))

  def ell(c, rx, ry):
    return ('ellipse', (np.asarray(c, float), rx, ry))

  # joints (x, y); left = +x
  sh = [np.array([s * param('shoulder_x') * H * wf, yv(param('y_shoulder'))]) + shift[i]
        for i, s in enumerate((1, -1))]
  hp = [np.array([s * param('hip_x') * H * sub['pelvis'], yv(param('y_hip'))]) + shift[2 + i]
        for i, s in enumerate((1, -1))]
  s1 = np.array([0.0, yv(param('y_s1'))])
  # spine: 24 vertebrae C1..L5 between the chin and S1 on a scoliotic curve, then the sacrum
  y0, y1 = yv(param('y_chin')) - 0.01 * H, s1[1]
  curve = lambda y: sub['scoliosis'] * np.sin(np.pi * (y - y0) / (y1 - y0) + sub['scoliosis_phase'])
  edges = np.linspace(y0, y1, 25)
  for k in range(24):
    ya, yb = edges[k], edges[k + 1]
    yc = (ya + yb) / 2
    half_w = H * (0.010 + 0.010 * k / 23) * (1 + sub['vertebra_jitter'][k])
    bones.append((ell((curve(yc), yc), half_w, 0.42 * (yb - ya)), 1.0, 1, 0.011 * H))
  s1[0] = curve(y1) * 0.5
  sac_w = 0.028 * H
  bones.append((cap((s1[0], s1[1] + 0.012 * H), (0, s1[1] + 0.07 * H), sac_w * 0.7, 0.008 * H),
                0.9, 1, 0.01 * H))
  # pelvis: iliac wings + the ring around the cavity (lower half); the cavity inside it
  pw = sub['pelvis']
  cav_c = np.array([0.0, yv(0.465)])
  for s in (1, -1):
    bones.append((ell((s * 0.062 * H * pw, yv(0.43)), 0.032 * H * pw, 0.03 * H), 0.8, 2,
                  0.006 * H))
  bones.append((('ring', (cav_c, 0.07 * H * pw, 0.05 * H, 0.045 * H * pw, 0.032 * H)), 0.8, 2,
                0.008 * H))
  cavity = ell(cav_c, 0.045 * H * pw, 0.032 * H)
  # skull, clavicles, ribs
  bones.append((('ring', (np.array([0, yv(0.065)]), 0.05 * H * wf, 0.066 * H, 0.045 * H * wf,
                          0.061 * H)), 1.1, 0, 0.004 * H))
  for i, s in enumerate((1, -1)):
    bones.append((cap((s * 0.012 * H, yv(0.168)), sh[i] + [-s * 0.01 * H, -0.006 * H],
                      0.005 * H), 0.8, 0))
  for k in range(10):
    yr = yv(0.19 + 0.015 * k)
    for i, s in enumerate((1, -1)):
      ang = np.deg2rad(25 + 2 * k + sub['rib_angles'][2 * k + i])
      reach = H * wf * (0.06 + 0.025 * np.sin(np.pi * (k + 2) / 13))
      end = np.array([curve(yr) + s * reach, yr + reach * np.tan(ang)])
      bones.append((cap((curve(yr) + s * 0.012 * H, yr), end, 0.0035 * H), 0.5, 0))
  # limbs: humerus, forearm, femur (head, neck, shaft), tibia
  limb_soft = []
  for i, s in enumerate((1, -1)):
    d = _rot(arms[i]) * [s, 1]
    elbow = sh[i] + d * param('upper_arm') * H * sub['arm_len']
    wrist = elbow + _rot(arms[i] * 0.7) * [s, 1] * param('forearm') * H * sub['arm_len']
    bones.append((cap(sh[i], elbow, 0.0075 * H), 1.0, 0))
    bones.append((ell(sh[i], 0.012 * H, 0.012 * H), 1.0, 0))
    bones.append((cap(elbow, wrist, 0.0055 * H), 0.8, 0))
    limb_soft += [cap(sh[i], elbow, 0.024 * H * wf, 0.02 * H * wf),
                  cap(elbow, wrist, 0.02 * H * wf, 0.014 * H * wf)]
    dl = _rot(legs[i]) * [s, 1]
    thigh = (param('y_knee') - param('y_hip')) * H * sub['leg_len']
    troch = hp[i] + np.array([s * 0.03 * H, 0.01 * H])
    knee = troch + dl * thigh
    ankle = knee + dl * (param('y_ankle') - param('y_knee')) * H * sub['leg_len']
    bones.append((ell(hp[i], 0.013 * H, 0.013 * H), 1.2, 0))
    bones.append((cap(hp[i], troch, 0.008 * H), 1.2, 0))
    bones.append((cap(troch, knee, 0.009 * H, 0.008 * H), 1.3, 0))
    bones.append((cap(knee + dl * 0.01 * H, ankle, 0.008 * H, 0.006 * H), 1.2, 0))
    limb_soft += [cap(hp[i] + [-s * 0.01 * H, 0], knee, 0.05 * H * wf, 0.03 * H * wf),
                  cap(knee, ankle, 0.03 * H * wf, 0.018 * H * wf)]
  # trunk and head soft tissue (lean radius; fat adds sub['fat'] outside)
  trunk = [cap((0, yv(0.12)), (0, yv(0.17)), 0.035 * H * wf, 0.04 * H * wf),
           cap((0, yv(0.19)), (0, yv(0.36)), 0.095 * H * wf, 0.085 * H * wf),
           cap((0, yv(0.36)), (0, yv(0.47)), 0.085 * H * wf, 0.095 * H * wf * pw),
           cap((0, yv(0.47)), (0, yv(0.50)), 0.095 * H * wf * pw, 0.09 * H * wf * pw)]
  head = ell((0, yv(0.065)), 0.05 * H * wf, 0.066 * H)
  soft = dict(trunk=trunk, limbs=limb_soft, head=head)
  o = np.asarray(sub['organs']) * H
  organs = [('lung', ell(np.array([0.048 * H * wf, yv(0.265)]) + o[0], 0.038 * H * wf, 0.07 * H)),
            ('lung', ell(np.array([-0.048 * H * wf, yv(0.265)]) + o[1], 0.038 * H * wf,
                         0.068 * H)),
            ('heart', ell(np.array([0.012 * H, yv(0.30)]) + o[2], 0.035 * H, 0.032 * H)),
            ('liver', ell(np.array([-0.04 * H, yv(0.355)]) + o[3], 0.06 * H * wf, 0.034 * H)),
            ('fat', ell(np.array([0.0, yv(0.42)]) + o[4],
                        min(0.03 * H * sub['visceral'] * sub['fat'] / 20, 0.075 * H * wf),
                        min(0.025 * H * sub['visceral'] * sub['fat'] / 20, 0.05 * H))),
            ('kidney', ell(np.array([0.045 * H, yv(0.395)]) + o[5], 0.014 * H, 0.028 * H)),
            ('kidney', ell(np.array([-0.045 * H, yv(0.40)]) + o[5], 0.014 * H, 0.028 * H)),
            ('bladder', ell(cav_c + [0, 0.008 * H], 0.025 * H, 0.018 * H))]
  kp = np.stack([hp[0], hp[1], sh[0], sh[1], s1])
  return dict(bones=bones, soft=soft, organs=organs, cavity=cavity, keypoints=kp)


# ----------------------------------------------------------------------------------------------
# Rasterisation: primitives evaluated at pixel centres given in body-frame mm.

def _capsule(P, geom):
  """(distance to the axis, local radius) of points P [..., 2] for a tapered capsule."""
  a, b, r0, r1 = geom
  ab = b - a
  t = np.clip(((P - a) @ ab) / max(ab @ ab, 1e-9), 0, 1)
  d = np.linalg.norm(P - (a + t[..., None] * ab), axis=-1)
  return d, r0 + (r1 - r0) * t


def _q(P, c, rx, ry):
  return ((P[..., 0] - c[0]) / rx) ** 2 + ((P[..., 1] - c[1]) / ry) ** 2


def _chord(P, prim, grow=0.0):
  """Normalised chord profile in [0, 1] (projection through a round cross-section) and the
  inside mask of a primitive, its radius grown by `grow` mm. Returns (profile, inside, radius)."""
  kind, g = prim
  if kind == 'capsule':
    d, r = _capsule(P, g)
    r = r + grow
    q = (d / r) ** 2
    return np.sqrt(np.clip(1 - q, 0, 1)), q < 1, r
  if kind == 'ellipse':
    c, rx, ry = g
    q = _q(P, c, rx + grow, ry + grow)
    return np.sqrt(np.clip(1 - q, 0, 1)), q < 1, np.full(P.shape[:-1], min(rx, ry) + grow)
  if kind == 'ring':
    c, ox, oy, ix, iy = g
    qo, qi = _q(P, c, ox, oy), _q(P, c, ix, iy)
    inside = (qo < 1) & (qi >= 1) & (P[..., 1] > c[1] - 0.2 * oy)
    prof = np.sqrt(np.clip(1 - qo, 0, 1)) - np.sqrt(np.clip(1 - qi, 0, 1))
    return np.where(inside, prof + 0.3, 0.0), inside, np.full(P.shape[:-1], ox - ix)
  raise ValueError(kind)


def render(anat: dict, sub: dict, P: np.ndarray, modality: str, rng: np.random.Generator):
  """Render one image at body-frame points P [h, w, 2] -> (image [h, w, 2] float32, mask uint8)."""
  shape = P.shape[:2]
  mask = np.zeros(shape, np.uint8)
  inside_body = np.zeros(shape, bool)
  lean = np.zeros(shape, bool)
  tissue_proj = np.zeros(shape)
  n_trunk = len(anat['soft']['trunk'])
  for k, prim in enumerate(anat['soft']['trunk'] + anat['soft']['limbs']):
    prof_f, in_f, r = _chord(P, prim, grow=sub['fat'])
    _, in_l, _ = _chord(P, prim)
    inside_body |= in_f
    lean |= in_l
    tissue_proj = np.maximum(tissue_proj, 2 * r * prof_f * (0.7 if k < n_trunk else 1.0))
  prof_h, in_h, _ = _chord(P, anat['soft']['head'], grow=0.3 * sub['fat'])
  tissue_proj = np.maximum(tissue_proj, 2 * 0.05 * sub['height'] * prof_h)
  inside_body |= in_h
  if modality == 'dxa':
    bone = np.zeros(shape)
    for prim, dens, label, *depth in anat['bones']:
      prof, inside, r = _chord(P, prim)
      r = depth[0] if depth else r     # plates (pelvis, skull) and vertebrae: their AP depth
      if prim[0] == 'ring':
        bone += dens * sub['density'] * prof * r
      else:   # cortex denser than marrow: full chord minus most of an inner chord
        prof_in, _, _ = _chord(P, (prim[0], _shrink(prim, 0.6)))
        bone += dens * sub['density'] * 2 * r * (prof - 0.6 * 0.6 * prof_in)
      if label:
        mask[inside & (mask == 0)] = label
    for name, prim in anat['organs']:
      if name == 'lung':
        prof, _, r = _chord(P, prim)
        tissue_proj -= 0.5 * 2 * r * prof * 0.7
    _, cav, _ = _chord(P, anat['cavity'])
    mask[cav & (mask == 0)] = 3
    bch = bone * param('dxa_bone_scale')
    tch = np.clip(tissue_proj, 0, None) * param('dxa_tissue_scale')
    img = np.stack([bch, tch + param('dxa_bone_in_tissue') * bch], -1)
    img = img + param('dxa_noise') * rng.standard_normal(img.shape) * inside_body[..., None]
    return np.clip(img, 0, None).astype(np.float32), mask
  # MRI slice: tissue classes painted in order
  T = param('mri_tissue')
  fat = np.zeros(shape)
  water = np.zeros(shape)

  def paint(where, name, fat_add=0.0):
    f, w = T[name]
    fat[where] = f + fat_add
    water[where] = w

  paint(inside_body, 'fat')
  paint(lean, 'muscle', fat_add=0.004 * sub['fat'])
  paint(in_h & ~lean, 'head')
  for name, prim in anat['organs']:
    _, inside, _ = _chord(P, prim)
    paint(inside & inside_body, name)
  for prim, dens, label, *_ in anat['bones']:
    _, inside, _ = _chord(P, prim)
    if prim[0] == 'ring':
      paint(inside & inside_body, 'cortex')
    else:
      _, marrow, _ = _chord(P, (prim[0], _shrink(prim, 0.6)))
      paint(inside & ~marrow & inside_body, 'cortex')
      paint(marrow & inside_body, 'marrow')
    if label:
      mask[inside & (mask == 0)] = label
  _, cav, _ = _chord(P, anat['cavity'])
  mask[cav & (mask == 0)] = 3
  # smooth multiplicative bias field over the image, then magnitude noise
  yy, xx = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing='ij')
  c = rng.uniform(-1, 1, 5)
  bias = 1 + param('mri_bias') * np.tanh(c[0] * yy + c[1] * xx + c[2] * yy * xx
                                         + c[3] * (yy ** 2 - 0.5) + c[4] * (xx ** 2 - 0.5))
  img = np.stack([fat, water], -1) * bias[..., None]
  n = param('mri_noise')
  img = np.sqrt((img + n * rng.standard_normal(img.shape)) ** 2
                + (n * rng.standard_normal(img.shape)) ** 2)
  return img.astype(np.float32), mask


def _shrink(prim, f):
  kind, g = prim
  if kind == 'capsule':
    return (g[0], g[1], g[2] * f, g[3] * f)
  return (g[0], g[1] * f, g[2] * f)


def _grid(shape, spacing, rot_deg, origin):
  """Body-frame points [h, w, 2] (x, y mm) of pixel centres: (x, y) = s * R (col, row) + origin."""
  r, c = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing='ij')
  th = np.deg2rad(rot_deg)
  x = spacing * (np.cos(th) * c - np.sin(th) * r) + origin[0]
  y = spacing * (np.sin(th) * c + np.cos(th) * r) + origin[1]
  return np.stack([x, y], -1)


def _to_pixels(pts, spacing, rot_deg, origin):
  """Inverse of _grid: body-frame (x, y) [K, 2] -> pixel (row, col) [K, 2]."""
  th = np.deg2rad(rot_deg)
  d = (np.asarray(pts) - origin) / spacing
  c = np.cos(th) * d[:, 0] + np.sin(th) * d[:, 1]
  r = -np.sin(th) * d[:, 0] + np.cos(th) * d[:, 1]
  return np.stack([r, c], -1)


def make_subject(seed, scale: int = 4) -> dict:
  """One subject: images, masks and truth. seed: anything np.random.default_rng accepts."""
  g = geometry(scale)
  rng = np.random.default_rng(seed)
  sub = sample_subject(rng)
  pose = mri_pose(sub, rng)
  s = g['spacing_mm']
  dh, dw = g['dxa_shape']
  mh, mw = g['mri_shape']
  # DXA: the vertex a few cm below the top edge, body centred (+- jitter); no rotation
  d_origin = np.array([-(dw - 1) / 2 * s + param('dxa_centre_sd_mm') * rng.standard_normal(),
                       -rng.uniform(*param('dxa_vertex_mm'))])
  # MRI: top edge near the neck, rotated by theta about its own top-centre
  sd_rot, clip_rot = param('mri_rotation_deg')
  theta = float(np.clip(sd_rot * rng.standard_normal(), -clip_rot, clip_rot))
  top = (param('mri_top')[0] + param('mri_top')[1] * rng.standard_normal()) * sub['height']
  centre = np.array([param('mri_centre_sd_mm') * rng.standard_normal(), top])
  th = np.deg2rad(theta)
  half = (mw - 1) / 2 * s
  m_origin = centre - np.array([np.cos(th) * half, np.sin(th) * half])
  anat_d, anat_m = anatomy(sub), anatomy(sub, pose)
  dxa, dmask = render(anat_d, sub, _grid((dh, dw), s, 0.0, d_origin), 'dxa', rng)
  mri, mmask = render(anat_m, sub, _grid((mh, mw), s, theta, m_origin), 'mri', rng)
  # MRI pixel (row, col) -> body frame -> DXA pixel (row, col): dxa = R(theta) mri + t
  R = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])   # acts on (row, col)
  t = _to_pixels(m_origin[None], s, 0.0, d_origin)[0]
  truth = dict(
      theta_deg=theta, translation_px=t.tolist(),
      matrix_mri_to_dxa=np.concatenate([R, t[:, None]], 1).tolist(),
      keypoints_dxa=_to_pixels(anat_d['keypoints'], s, 0.0, d_origin).tolist(),
      keypoints_mri=_to_pixels(anat_m['keypoints'], s, theta, m_origin).tolist(),
      subject={k: v for k, v in sub.items() if not isinstance(v, list) or k in ('arms', 'legs')},
      mri_pose=dict(arms=pose['arms'], legs=pose['legs']))
  return dict(dxa=dxa, mri=mri, dxa_mask=dmask, mri_mask=mmask, truth=truth,
              spacing_mm=s)


def apply_transform(matrix, pts_mri):
  """MRI pixel (row, col) [K, 2] -> DXA pixel (row, col) with a 2 x 3 matrix."""
  m = np.asarray(matrix, float)
  return np.asarray(pts_mri, float) @ m[:, :2].T + m[:, 2]


# ----------------------------------------------------------------------------------------------
# Files.

SPLIT_CODES = {'train': 0, 'val': 1, 'test': 2}


def _write(arr, path, spacing, vector):
  img = sitk.GetImageFromArray(arr, isVector=vector)
  img.SetSpacing((spacing, spacing))
  sitk.WriteImage(img, path)


def _one(args):
  out, split, i, seed, scale = args
  subj = make_subject([seed, SPLIT_CODES[split], i], scale)
  d = os.path.join(out, split, f'{i:05d}')
  os.makedirs(d, exist_ok=True)
  s = subj['spacing_mm']
  _write(subj['dxa'], os.path.join(d, 'dxa.nii'), s, True)
  _write(subj['mri'], os.path.join(d, 'mri.nii'), s, True)
  _write(subj['dxa_mask'], os.path.join(d, 'dxa_mask.nii'), s, False)
  _write(subj['mri_mask'], os.path.join(d, 'mri_mask.nii'), s, False)
  return dict(id=f'{split}/{i:05d}', **subj['truth'])


def info(scale, seed, sizes) -> dict:
  return dict(generator='bodysim', version=VERSION, scale=int(scale), seed=int(seed),
              splits=dict(sizes), geometry=geometry(scale),
              params={k: v[0] for k, v in PARAMS.items()}, keypoints=list(KEYPOINTS),
              mask_labels=MASK_LABELS, dxa_channels=list(DXA_CHANNELS),
              mri_channels=list(MRI_CHANNELS),
              transform='dxa_rc = R(theta) @ mri_rc + t; matrix_mri_to_dxa = [R | t], pixels')


def is_current(out_dir, scale, seed, sizes) -> bool:
  try:
    with open(os.path.join(out_dir, MARKER), encoding='utf-8') as f:
      return json.load(f) == json.loads(json.dumps(info(scale, seed, sizes)))
  except (OSError, ValueError):
    return False


def split_size(data_dir: str, split: str) -> int:
  """Subjects in `split` of a BodySim folder, from its marker (0 for a split it lacks)."""
  path = os.path.join(data_dir, MARKER)
  if not os.path.exists(path):
    raise OsteoDataError(data_dir, f'not a BodySim data set (no {MARKER}); make one with '
                                   f'tools/make_bodysim.py')
  with open(path, encoding='utf-8') as f:
    return int(json.load(f).get('splits', {}).get(split, 0))


def generate(out_dir: str, scale: int = 4, seed: int = 0, sizes: dict | None = None,
             workers: int = 0, progress: bool = True) -> str:
  """Write a BodySim data set to out_dir atomically (staged folder renamed at the end)."""
  sizes = dict(SPLIT_SIZES if sizes is None else sizes)
  geometry(scale)
  for k in sizes:
    if k not in SPLIT_CODES:
      raise ConfigError(f'unknown split {k!r} (train, val, test)')
  jobs = [(split, i) for split, n in sizes.items() for i in range(int(n))]
  with staged_dir(out_dir, MARKER) as tmp:
    args = [(tmp, split, i, seed, scale) for split, i in jobs]
    if workers and workers > 1:
      with ProcessPoolExecutor(workers) as ex:
        rows = list(ex.map(_one, args, chunksize=8))
    else:
      rows = []
      for k, a in enumerate(args):
        rows.append(_one(a))
        if progress and (k + 1) % 100 == 0:
          print(f'[bodysim] {k + 1}/{len(args)} subjects', flush=True)
    for split in sizes:
      with open(os.path.join(tmp, f'truth_{split}.json'), 'w', encoding='utf-8') as f:
        json.dump([r for r in rows if r['id'].startswith(split + '/')], f)
    with open(os.path.join(tmp, MARKER), 'w', encoding='utf-8') as f:
      json.dump(info(scale, seed, sizes), f, indent=1)
  return out_dir


# ----------------------------------------------------------------------------------------------
# Loading (checked).

def read_scan(path, channels: int | None = None) -> tuple[np.ndarray, tuple]:
  """A 2-D scan as [H, W, C] float32 and its spacing (mm); OsteoDataError on bad content."""
  img = io.read_file(path)
  if img.GetDimension() != 2:
    raise OsteoDataError(path, f'expected a 2-D image, got {img.GetDimension()}-D')
  arr = sitk.GetArrayFromImage(img).astype(np.float32)
  if arr.ndim == 2:
    arr = arr[..., None]
  if channels is not None and arr.shape[-1] != channels:
    raise OsteoDataError(path, f'expected {channels} channels, got {arr.shape[-1]}')
  if not np.isfinite(arr).all():
    raise OsteoDataError(path, f'{int((~np.isfinite(arr)).sum())} NaN or infinite pixels')
  return arr, tuple(img.GetSpacing())


def check_pair(dxa_spacing, mri_spacing, where='') -> None:
  """Both modalities must share one isotropic pixel spacing (the correlation compares pixels)."""
  if not np.allclose(dxa_spacing, mri_spacing, rtol=1e-3):
    raise OsteoDataError(where or 'pair', f'pixel spacings differ between modalities: DXA '
                         f'{tuple(round(v, 4) for v in dxa_spacing)} mm, MRI '
                         f'{tuple(round(v, 4) for v in mri_spacing)} mm; resample first')
  for s in (dxa_spacing, mri_spacing):
    if not np.isclose(s[0], s[1], rtol=1e-3):
      raise OsteoDataError(where or 'pair', f'anisotropic pixel spacing {s}; resample first')


def load_pairs(data_dir: str, split: str, limit: int | None = None) -> dict:
  """Read a BodySim split: arrays + truth.

  Returns dict(dxa [N, H, W, 2] float32 (bone, tissue), mri [N, h, w, 2] float32 (fat, water),
  dxa_mask [N, H, W] uint8, mri_mask [N, h, w] uint8 (labels MASK_LABELS), keypoints_dxa /
  keypoints_mri [N, 5, 2] (row, col) pixels in KEYPOINTS order, matrix_mri_to_dxa [N, 2, 3],
  theta_deg [N], translation_px [N, 2], ids [N], spacing_mm float, truth (list of dicts)).
  """
  marker = os.path.join(data_dir, MARKER)
  if not os.path.exists(marker):
    raise OsteoDataError(data_dir, f'not a BodySim data set (no {MARKER}); make one with '
                                   f'tools/make_bodysim.py')
  tpath = os.path.join(data_dir, f'truth_{split}.json')
  if not os.path.exists(tpath):
    raise OsteoDataError(data_dir, f'no split {split!r} in this data set')
  with open(tpath, encoding='utf-8') as f:
    truth = json.load(f)[:limit]
  if not truth:
    raise OsteoDataError(tpath, f'split {split!r} is empty')
  out = {k: [] for k in ('dxa', 'mri', 'dxa_mask', 'mri_mask')}
  spacing = None
  for t in truth:
    d = os.path.join(data_dir, t['id'])
    dxa, sd = read_scan(os.path.join(d, 'dxa.nii'), 2)
    mri, sm = read_scan(os.path.join(d, 'mri.nii'), 2)
    check_pair(sd, sm, d)
    spacing = sd[0]
    out['dxa'].append(dxa)
    out['mri'].append(mri)
    out['dxa_mask'].append(read_scan(os.path.join(d, 'dxa_mask.nii'), 1)[0][..., 0])
    out['mri_mask'].append(read_scan(os.path.join(d, 'mri_mask.nii'), 1)[0][..., 0])
  res = {k: np.stack(v) for k, v in out.items()}
  res['dxa_mask'] = res['dxa_mask'].astype(np.uint8)
  res['mri_mask'] = res['mri_mask'].astype(np.uint8)
  for k in ('keypoints_dxa', 'keypoints_mri', 'matrix_mri_to_dxa', 'theta_deg', 'translation_px'):
    res[k] = np.asarray([t[k] for t in truth], np.float64)
  res.update(ids=[t['id'] for t in truth], spacing_mm=float(spacing), truth=truth)
  return res
