"""Refinement regressor: a small CNN + MLP that corrects an almost-aligned registration.

  python tools/train_refiner.py --config configs/refine.py --workdir runs/refine

Trained on self-made perturbations of aligned pairs (the paper: 50 pairs aligned by salient
point matching, several perturbed copies each). Data source 'synthetic': generated feature-map
pairs with a known transform (osteojax.align.synthetic), standing in for encoder maps.
The default is CPU-sized; `:paper` uses the paper's map sizes (MRI 62 x 28, DXA 100 x 37,
128 channels) and 50 training pairs; `:tiny` is for tests. Perturbations: up to 1 cell (8 px)
and 2 degrees (the paper gives no range; the salient method's errors are about one cell).
Input: the paper concatenates the two maps; model.corr_radius = r > 0 adds their local
correlation volume ((2r + 1)^2 cosine similarities per cell), without which the regressor
fitted its 50 generated training pairs but did not improve held-out ones (corr_radius=0 is the
paper's input).
`:image` is the paper's refiner at image resolution, used by tools/registration_table.py: the
MRI image beside the DXA image warped onto it (both normalised per channel), trained on
BodySim training pairs through their true alignment (pairs known to be aligned), perturbations
up to 3 px (26 mm at 8.8 mm, above the salient method's typical error of about one 2-px cell)
and 3 degrees, no correlation volume (the channels of the two modalities differ).
"""
import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.task = 'refine'
  c.seed = 0                   # model init, batch order, perturbations
  c.batch_size = 16
  c.steps = 400
  c.log_every = 50
  c.ckpt_every = 200
  c.data = ml_collections.ConfigDict(dict(
      source='synthetic', seed=0, train_pairs=50, test_pairs=50, src_hw=(24, 12),
      tgt_hw=(40, 16), channels=32, length=2.0, noise=0.5, max_angle_deg=8.0, margin=1.0))
  c.perturb = ml_collections.ConfigDict(dict(max_shift=1.0, max_angle_deg=2.0))
  c.model = ml_collections.ConfigDict(dict(widths=(32, 64), hidden=128, corr_radius=2,
                                            unit_vectors=True))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, b1=0.9, b2=0.999, weight_decay=1e-4, warmup_steps=20, decay='cosine'))
  if arg == 'paper':
    c.data.src_hw, c.data.tgt_hw, c.data.channels = (62, 28), (100, 37), 128
    c.model.widths, c.model.hidden = (64, 64, 64), 256
    c.steps, c.ckpt_every = 2000, 500
  elif arg == 'image':
    c.data.source = 'bodysim'
    c.perturb.max_shift, c.perturb.max_angle_deg = 3.0, 3.0
    c.model.widths, c.model.hidden, c.model.corr_radius = (16, 32, 64), 128, 0
    c.model.unit_vectors = False
  elif arg == 'tiny':
    c.data.train_pairs, c.data.test_pairs = 16, 12
    c.data.src_hw, c.data.tgt_hw, c.data.channels = (12, 10), (18, 14), 8
    c.model.widths, c.model.hidden = (16, 16), 32
    c.batch_size, c.steps, c.log_every, c.ckpt_every = 8, 500, 100, 500
  elif arg:
    raise ValueError(f'unknown config argument {arg!r} (use paper, image or tiny)')
  return c
