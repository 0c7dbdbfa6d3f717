"""OsteoSim generator parameters: every number in one place, each with its source.

Section numbers (§) refer to ../shared/DATA_FACTS.md, which holds the published values and marks
those that are "(unverified, from memory)". Numbers marked FREE have no published value and were
chosen once, before any model existed; DERIVED numbers are computed here from the cited ones.

These parameters were frozen with the generator (foundation issue). They must never be changed to
make one method win: a change needs a new DATA_FACTS source and a note in the README.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

# ----------------------------------------------------------------------------------------------
# Vertebra levels: 18 classes T1..T12, L1..L6 (the paper's level task, labels 1..18 -> 0..17).
LEVELS = tuple([f'T{i}' for i in range(1, 13)] + [f'L{i}' for i in range(1, 7)])
LEVEL_INDEX = {name: i for i, name in enumerate(LEVELS)}
LABELED_LEVELS = ('L1', 'L2', 'L3', 'L4')  # DXA measures L1-L4 (paper Sec. 1; §2)

# ----------------------------------------------------------------------------------------------
# Sites and counts: the paper's Table 1 (patients train/valid/test; vertebrae with DXA ground
# truth train/valid/test; unlabeled pre-training vertebrae). D is the external site.
SITES = {
    #        device      patients            labeled vertebrae     unlabeled   CT scanners
    'A': dict(device='hologic', patients=(1330, 226, 669), vertebrae=(2980, 510, 1490),
              unlabeled=18308, scanners=('A1', 'A2')),
    'B': dict(device='ge_lunar', patients=(683, 112, 325), vertebrae=(1220, 200, 610),
              unlabeled=9232, scanners=('B1', 'B2')),
    'C': dict(device='medix', patients=(217, 36, 106), vertebrae=(801, 129, 398),
              unlabeled=2716, scanners=('C1',)),
    'D': dict(device='hologic', patients=(0, 0, 193), vertebrae=(0, 0, 271),
              unlabeled=0, scanners=('D1', 'D2')),  # external: different CT scanners
}
SPLITS = ('train', 'valid', 'test')

# ----------------------------------------------------------------------------------------------
# Population. FREE: the paper gives no demographics. An opportunistic-CT population of adults;
# sex balanced; age spread so that the osteoporosis prevalence over 50 lands near NHANES (§3).
AGE_MEAN, AGE_SD, AGE_MIN, AGE_MAX = 62.0, 12.0, 30.0, 90.0   # FREE
FEMALE_FRACTION = 0.5                                          # FREE
ENUMERATION_L6_RATE = 100 / 1446   # 6 lumbar / transitional: Yun et al. 2018 (§5)

# Cohorts. 'population': the adults above as they are (osteoporosis prevalence over 50 near
# NHANES, §3). 'paper': the patients of the paper's sites, who were referred for DXA: its Table 2
# implies a vertebra-level prevalence of about 39% (A), 16% (B), 13% (C), 35% (D) (§9, median of
# the eight rows of each site). The age/sex mix alone cannot reach A's and D's: with every
# patient a woman of mean age 80 (SD 12, redrawn within 30-90) the Hologic vertebra prevalence
# is 22.7% (measured on this generator, tools/calibrate_cohort.py --explain). Referral is modelled
# instead as selection on the latent bone density: a referred patient is a population patient
# accepted with probability proportional to exp(-k z), z = the patient's standardised L1 HU
# residual, which draws z from N(-k, 1): the between-subject HU mean moves by -k * HU_L1_SD.
# One k per site, DERIVED by tools/calibrate_cohort.py (bisection, 40,000 patients per site, seed
# 0, common random numbers) so that the site's labeled vertebrae reach the §9 prevalence on the
# site's own device; fixed before any model ran on this cohort. Age, sex and everything else
# stay the population's. Unlabeled pre-training vertebrae come from other patients' chest and
# abdominal CTs, not referred for DXA: they stay the population's in both cohorts.
PAPER_PREVALENCE = {'A': 0.39, 'B': 0.16, 'C': 0.13, 'D': 0.35}   # §9
REFERRAL_SHIFT_SD = {
    'population': {'A': 0.0, 'B': 0.0, 'C': 0.0, 'D': 0.0},
    # DERIVED: tools/calibrate_cohort.py (reached 0.390 / 0.160 / 0.130 / 0.350)
    'paper': {'A': 1.391, 'B': 0.440, 'C': 0.305, 'D': 1.268},
}
COHORTS = tuple(REFERRAL_SHIFT_SD)

# ----------------------------------------------------------------------------------------------
# Latent bone density: L1 trabecular HU at a reference 120 kV scanner, by age and sex.
# §3 Jang 2019: -2.5 HU/yr overall, 226 +- 44 HU < 30 y, 89 +- 38 HU >= 90 y; women > men until
# menopause, then similar. Hendrickson 2018: young women L1 236 +- 42 HU. Riggs 2004 lifetime
# loss 20->90 y: women ~-55%, men ~-46%. Menopause: -1 to -2 %/yr for 5-10 yr (§3).
# Piecewise-linear mean curves through these anchors (DERIVED):
#   women: 236 at <=30, -0.6/yr to 50 (224), menopause -4.3/yr for 50-58 (~-2%/yr, 190), then
#          -2.8/yr to 90 (100): lifetime -58% (Riggs -55%);
#   men:   220 at <=30, -1.9/yr to 90 (105): lifetime -52% (Riggs -46%). Overall slope over a
#          30-90 y population ~-2.2 HU/yr (Jang -2.5); >= 90 y mean ~100 (Jang 89 +- 38).
# This is the *measured* HU at a reference 120 kV scanner; vBMD follows from it and marrow fat.
HU_L1_WOMEN = ((30, 236.0), (50, 224.0), (58, 190.0), (90, 100.0))
HU_L1_MEN = ((30, 220.0), (90, 105.0))
HU_L1_SD = 40.0                    # between-subject SD at any age (§3: 42-44 young, 38 old)
HU_LEVEL_SD = 0.04                 # within-subject level-to-level relative scatter. FREE
# vBMD of a level relative to L1 (DERIVED: Hendrickson L3/L1 = 227/236 = 0.962; thoracic
# vertebrae denser than lumbar -- direction well known, size unverified: +10% at T1 to +2% T12).
_THORACIC_REL = [1.10 - 0.08 * i / 11 for i in range(12)]
LEVEL_VBMD_REL = dict(zip(LEVELS, _THORACIC_REL + [1.00, 0.98, 0.962, 0.955, 0.95, 0.95]))

# Trabecular bone: BV/TV ~ vBMD / 1000 mg/cm3 (§5, unverified): 15-25% young, 8-12% elderly.
# A trabecular voxel is BV/TV bone tissue + (1 - BV/TV) marrow, so
#   HU = BV/TV * BONE_TISSUE_HU + (1 - BV/TV) * HU_marrow(PDFF),
# and BONE_TISSUE_HU = 1250 makes vBMD ~ 0.8 mg/cm3 per HU where marrow reads ~0 HU (§4).
BONE_TISSUE_MG = 1000.0
BONE_TISSUE_HU = 1250.0

# Marrow fat (PDFF) by age and sex: Baum 2018 (§5): 20s men 32 +- 8%, women 27 +- 6%; rises with
# age, faster in women after menopause. DERIVED slopes: men +0.3 %/yr, women +0.2 %/yr to 50
# then +0.6 %/yr; clipped to [10, 80] %. HU of marrow components (FREE, textbook values):
PDFF_MEN = ((25, 32.0), (90, 51.5))
PDFF_WOMEN = ((25, 27.0), (50, 32.0), (90, 56.0))
PDFF_SD = 7.0
HU_FAT, HU_RED_MARROW = -100.0, 40.0
HU_SOFT_TISSUE, HU_DISC, HU_FAT_TISSUE = 45.0, 85.0, -95.0   # FREE textbook values
HU_CORTEX_TISSUE = 1400.0   # compact bone before partial volume (FREE)
CORTEX_MM = (0.25, 0.5)     # cortical shell thickness, uniform range (§5: 0.2-0.5 mm)

# ----------------------------------------------------------------------------------------------
# Vertebral body size (mm): Panjabi 1991/1992 as tabulated in §5 (height, width, depth),
# interpolated between the anchor levels; L6 as L5.
SIZE_ANCHORS = {'T1': (14, 25, 16), 'T6': (18, 28, 26), 'T12': (23, 40, 32),
                'L1': (25, 42, 34), 'L3': (26, 47, 36), 'L5': (25, 51, 36)}
SIZE_SD = 0.02                 # individual size factor SD (FREE)
MALE_SIZE_FACTOR = 1.036       # DERIVED: young men read their Hologic reference (1.06)
DISC_MM = (7.0, 10.0)          # intervertebral disc height range (FREE)

# ----------------------------------------------------------------------------------------------
# Areal BMD (true, in Hologic g/cm2, before confounders):
#   aBMD = size * level_shape[level] * (ABMD_BASE * (1 + e_base) + ABMD_PER_MG * vBMD_level)
# ABMD_BASE is the cortex and posterior elements (mostly cortical, little age loss: FREE), with a
# per-patient spread e_base ~ N(0, ABMD_BASE_CV); ABMD_PER_MG the trabecular part. DERIVED from
# §2/§3 together: young women (L1 vBMD ~187 mg/cm3) read 1.047 on Hologic L1-L4, and the share
# of the trabecular term at age 30 (62%) is what puts the spine-DXA osteoporosis prevalence over
# 50 near NHANES (women 11.6%, men 3.6% with the facet term below, §3) given the Jang/Riggs HU
# losses. With it the young-women SD is 0.118 (reference 0.110, §2): the residual mismatch is
# kept rather than shrinking the device noise below the published figures. level_shape makes L1..L4 follow the per-level ratios of §2 (Biology
# Direct 2025 Table 1, women: L1 0.960, L2 1.064, L3 1.100, L4 1.086).
ABMD_PER_MG = 0.62 * 1.047 / 187.0
ABMD_BASE = 0.38 * 1.047
ABMD_BASE_CV = 0.02
ABMD_LEVEL_RATIO = {'L1': 0.960, 'L2': 1.064, 'L3': 1.100, 'L4': 1.086}
ABMD_YOUNG_WOMEN = 1.047

# ----------------------------------------------------------------------------------------------
# DXA devices (§2). Calibration maps true (Hologic-scale) aBMD to each maker's reading.
#   Genant 1994: Lunar = 1.074 Hologic + 0.054; Norland = 1.068 Hologic - 0.070.
#   MEDIX DR: no public reference (§2) -> FREE: modelled as a pencil-beam device with Norland's
#   published calibration, precision and (derived) reference.
# Young-adult references (mean, sd) by sex, L1-L4: Hologic women 1.047 +- 0.110, men 1.06 +- 0.11;
#   GE Lunar women 1.19 +- 0.12, men 1.20 +- 0.12 (§2, unverified midpoints); MEDIX: Norland's
#   equation applied to the Hologic reference (DERIVED, as §2 does for Norland).
# Per-patient cross-calibration residual: Hui 1997 per-patient error of the sBMD equations ~3.5%
#   (§2) between two makers -> 3.5%/sqrt(2) per device so that a pair of makers differs by 3.5%.
# Short-term precision CV (§2): Hologic 1.08%, GE Lunar 1.22%, Norland (MEDIX) 1.58%.
DEVICES = {
    'hologic': dict(slope=1.0, intercept=0.0, precision_cv=0.0108,
                    ref={'F': (1.047, 0.110), 'M': (1.06, 0.11)}),
    'ge_lunar': dict(slope=1.074, intercept=0.054, precision_cv=0.0122,
                     ref={'F': (1.19, 0.12), 'M': (1.20, 0.12)}),
    'medix': dict(slope=1.068, intercept=-0.070, precision_cv=0.0158,
                  ref={'F': (1.068 * 1.047 - 0.070, 1.068 * 0.110),
                       'M': (1.068 * 1.06 - 0.070, 1.068 * 0.11)}),
}
DEVICE_NAMES = tuple(DEVICES)
DEVICE_RESIDUAL_CV = 0.035 / 2 ** 0.5
OSTEOPOROSIS_T = -2.5            # WHO 1994 (§1): T <= -2.5

# Degenerative elevation of spine aBMD (§6): prevalence at 75 y and 85 y per level (OPRA cohort),
# fitted per level by a logistic in age; when present it raises aBMD by U(3%, 14%) (Rand 1997:
# up to +14%; lower bound FREE). Never applied to CT.
DEGENERATION_PREVALENCE = {'L1': (0.05, 0.20), 'L2': (0.15, 0.39), 'L3': (0.26, 0.59),
                           'L4': (0.36, 0.72)}
DEGENERATION_ELEVATION = (0.03, 0.14)
# Facet sclerosis in men (§6): +0.03..0.28 g/cm2 (grade 2) on a vertebra's reading; prevalence
# by age FREE (logistic through (age, p) anchors), set so that men's spine prevalence over 50
# lands near NHANES (3.6%, §3) while the women's is set by the trabecular share above.
FACET_SCLEROSIS_MEN = dict(prevalence=((50, 0.35), (80, 0.85)), elevation_gcm2=(0.03, 0.28))

# ----------------------------------------------------------------------------------------------
# CT scanners (§4, §8). HU_measured = HU_true + (kv_gain - 1) * max(HU_true, 0) + offset, then
# blur (reconstruction kernel in-plane FWHM, slice profile FWHM = slice thickness) and noise.
# kv_gain: 100 kV reads bone 10-15% higher than 120 kV (§4); offsets span the ROI-method/scanner
# spread (+-21 HU, Jang 2019, §4). Noise: 20-40 HU at 1 mm, 10-15 HU at 5 mm (§8), scaled by
# sqrt(voxel volume). Pixel 0.6-0.9 mm, slices 0.5-5 mm (§8). Scanner values are FREE within
# those ranges; D's scanners differ from A-C's on purpose (external site).
SCANNERS = {
    'A1': dict(kv=120, kv_gain=1.00, offset=0.0, pixel_mm=0.70, slice_mm=1.0, fwhm_mm=0.8,
               noise_1mm=28.0),
    'A2': dict(kv=120, kv_gain=1.00, offset=8.0, pixel_mm=0.78, slice_mm=5.0, fwhm_mm=1.0,
               noise_1mm=30.0),
    'B1': dict(kv=120, kv_gain=1.00, offset=-6.0, pixel_mm=0.74, slice_mm=1.25, fwhm_mm=0.9,
               noise_1mm=25.0),
    'B2': dict(kv=100, kv_gain=1.12, offset=4.0, pixel_mm=0.68, slice_mm=2.0, fwhm_mm=0.8,
               noise_1mm=35.0),
    'C1': dict(kv=120, kv_gain=1.00, offset=12.0, pixel_mm=0.82, slice_mm=3.0, fwhm_mm=1.1,
               noise_1mm=32.0),
    'D1': dict(kv=100, kv_gain=1.14, offset=-15.0, pixel_mm=0.60, slice_mm=0.625, fwhm_mm=0.6,
               noise_1mm=38.0),
    'D2': dict(kv=120, kv_gain=1.00, offset=21.0, pixel_mm=0.90, slice_mm=5.0, fwhm_mm=1.2,
               noise_1mm=30.0),
}
NOISE_REF_VOXEL_MM3 = 0.7 * 0.7 * 1.0   # the voxel the 20-40 HU at 1 mm refers to (§8)
TRABECULAR_CORR_MM = 1.2   # correlation length of the visible trabecular pattern (FREE: the
                           # 0.1 mm struts (§5) are unresolvable; CT shows their coarse mottle)

# Unlabeled pre-training scans: a chest CT covers T1..L1/L2, an abdominal CT T10..L5/L6 (FREE).
SCAN_RANGES = {'chest': ('T1', 'L2'), 'abdomen': ('T10', 'L6')}


@dataclasses.dataclass(frozen=True)
class RoiGeometry:
  """ROI grid of the stored vertebra volumes: shape (z, y, x) voxels and isotropic spacing mm."""
  shape: tuple = (32, 32, 32)
  spacing_mm: float = 1.8
  supersample: int = 2   # the phantom is rendered this much finer, then blurred and averaged


def params_digest() -> str:
  """A short hash of every parameter above: stored in the manifest to tie data to parameters."""
  blob = json.dumps({k: v for k, v in globals().items()
                     if k.isupper() and not k.startswith('_')}, sort_keys=True, default=str)
  return hashlib.sha1(blob.encode()).hexdigest()[:12]
