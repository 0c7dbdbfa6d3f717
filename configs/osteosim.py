"""OsteoSim: the generated multi-site vertebra CT data set (Table 1 of the TP-SwAV paper).

  python -m osteojax.main --config configs/osteosim.py --workdir runs/osteosim
  python -m osteojax.main --config configs/osteosim.py:paper --workdir runs/osteosim_full

`:tiny` is for tests; `:paper` writes every vertebra of Table 1 (about 39,000 ROIs at 64^3,
0.9 mm; hours on 2 cores, minutes on a many-core host).
"""
import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.task = 'osteosim'
  c.data = ml_collections.ConfigDict(dict(
      seed=0,                 # the data set's seed (model seeds are separate)
      dir='',                 # '' -> data/osteosim_s<scale>_seed<seed>_<shape>
      scale=0.05,             # multiplies every count of Table 1 (1.0 = the paper's size)
      labeled_scale=0.2,      # ... of the labeled train/valid/test splits (None: = scale)
      roi_shape=(32, 32, 32),  # z, y, x voxels
      spacing_mm=1.8,         # isotropic ROI spacing
      supersample=2,          # phantom rendered this much finer, then blurred and averaged
      workers=0,              # rendering processes (0: all cores)
  ))
  if arg == 'tiny':
    c.data.scale, c.data.labeled_scale = 0.004, None
    c.data.roi_shape = (16, 16, 16)
    c.data.spacing_mm = 3.6
  elif arg == 'paper':
    c.data.scale, c.data.labeled_scale = 1.0, None
    c.data.roi_shape = (64, 64, 64)
    c.data.spacing_mm = 0.9
  elif arg:
    raise ValueError(f'unknown config argument {arg!r} (use tiny or paper)')
  return c
