"""OsteoSim: the generated multi-site vertebra CT data set (Table 1 of the TP-SwAV paper).

  python -m osteojax.main --config configs/osteosim.py --workdir runs/osteosim
  python -m osteojax.main --config configs/osteosim.py:paper --workdir runs/osteosim_full

`:tiny` is for tests; `:paper` writes every vertebra of Table 1 (about 39,000 ROIs at 64^3,
0.9 mm; hours on 2 cores, minutes on a many-core host).
"""
import ml_collections


def data_config(arg=None) -> ml_collections.ConfigDict:
  """The data section every diagnosis config shares (osteosim, tp_swav, swav, finetune)."""
  d = ml_collections.ConfigDict(dict(
      seed=0,                 # the data set's seed (model seeds are separate)
      dir='',                 # '' -> data/osteosim_<cohort>_s<scale>_..._seed<seed>_<shape>
      cohort='paper',         # 'paper': per-site prevalence of the paper's Table 2 (referred
                              # patients); 'population': NHANES-like adults (params.py)
      scale=0.05,             # multiplies every count of Table 1 (1.0 = the paper's size)
      labeled_scale=0.2,      # ... of the labeled train/valid/test splits (None: = scale)
      roi_shape=(32, 32, 32),  # z, y, x voxels
      spacing_mm=1.8,         # isotropic ROI spacing
      supersample=2,          # phantom rendered this much finer, then blurred and averaged
      workers=0,              # rendering processes (0: all cores)
  ))
  if arg == 'tiny':
    d.scale, d.labeled_scale = 0.004, None
    d.roi_shape = (16, 16, 16)
    d.spacing_mm = 3.6
  elif arg == 'paper':
    d.scale, d.labeled_scale = 1.0, None
    d.roi_shape = (64, 64, 64)
    d.spacing_mm = 0.9
  return d


def get_config(arg=None):
  if arg not in (None, '', 'tiny', 'paper'):
    raise ValueError(f'unknown config argument {arg!r} (use tiny or paper)')
  c = ml_collections.ConfigDict()
  c.task = 'osteosim'
  c.data = data_config(arg)
  return c
