"""DXA-MRI aligner: contrastive training of two spatial encoders on BodySim pairs.

  python -m osteojax.main --config configs/align.py --workdir runs/align
  python -m osteojax.main --config configs/align.py:paper --workdir runs/align_paper
  python tools/eval_align.py --workdir runs/align

The default is sized for a 2-core CPU: BodySim at scale 4 (DXA 200 x 75, MRI 125 x 56 at 8.8
mm), slim encoders (widths 16 / 32 / 64, 128-d output) scaled to the pixel spacing
(`model.pools='auto'`: the number of poolings whose cell is nearest the paper's 17.6 mm; one at
8.8 mm, maps 100 x 37 and 62 x 28; chosen on the validation split, docs/align.md), batch 16,
1600 steps (R@1 on 300 validation pairs 78.5 +- 30.2 % over 4 seeds against 58.5 +- 26.4 % at
800; one start ~30 min on 2 cores; `tools/align_tables.py --tables steps`), Adam lr 1e-3 (the
paper's 1e-5 is for 3 GPU-days; at a few CPU minutes it barely moves), each scan normalised per
channel to [0, 1], and the authors' augmentation: +-10 degree rotation, +-1 px translation
(their +-4 px at 2 mm), brightness +-20 %, gamma from (1, 1, 0.5, 1.5). The checkpoint with the
best validation mean rank is evaluated. Three starts (`starts`; seeds seed, seed + 1000,
seed + 2000) train `start_steps` = 200 steps each and the one with the lowest validation mean
rank goes on (osteojax/align/train.py) to `steps`: a start that settles on a wrong correspondence is
dropped, and the two dropped starts cost 400 steps (2,000 steps in all: ~37 min on 2 cores at
~1.1 s/step, ~65 min at 1.9 s/step); R@1 on 300 validation pairs 89.4 +- 7.1 % over 4 seeds
against 78.5 +- 30.2 % with one start (`tools/align_tables.py --tables starts`).
`--config.starts=1` trains the one start. `:legacy` is the recipe before (three poolings
whatever the spacing, +-8 px, no rotation / gamma / normalisation), kept for the comparison (at
its 400 steps). `:paper` gives the paper's values (full-size scans 800 x 300 / 501 x 224,
encoder widths 64 / 128 / 256 / 512, batch 10, Adam lr 1e-5, betas 0.9 / 0.999, tau 0.01, +-5
px), for accelerators. `:pooled` is the pooled-embedding baseline at CPU size; `:tiny` is for
tests.
Select channels like the paper's Table 2 with e.g. --config.model.dxa_channels="('bone',)".
"""
import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.task = 'align'
  c.seed = 0                  # model init, batch order, augmentations (not the data)
  c.batch_size = 16           # global batch, split over devices; the negatives of each pair
  c.steps = 1600              # 64 epochs of the 400 training pairs, chosen on validation
                              # against 800 (docs/align.md); one start ~30 min on 2 cores
  c.log_every = 25
  c.ckpt_every = 100
  c.eval_every = 50           # validation retrieval; the best mean rank's checkpoint is kept
  c.eval_split = 'test'       # evaluated after training ('' to skip)
  c.starts = 3                # train that many starts (seeds seed + 1000 i) for start_steps
  c.start_steps = 200         # steps and go on with the lowest validation mean rank (1: one)
  c.data = ml_collections.ConfigDict(dict(
      dir='', scale=4, seed=0, sizes=dict(train=400, val=50, test=100), workers=2,
      train_limit=0, normalise='minmax',
      # your own pairs: a manifest CSV (osteojax/align/manifest.py), resampled to spacing_mm
      # and placed on the canvases (rows, cols); 0 / () = BodySim's at `scale`
      manifest='', spacing_mm=0.0, dxa_canvas=(), mri_canvas=()))
  c.model = ml_collections.ConfigDict(dict(
      encoder='spatial', widths=(16, 32, 64), last_width=64, embed_dim=128, pools='auto',
      dxa_channels=('bone', 'tissue'), mri_channels=('fat', 'water')))
  c.loss = ml_collections.ConfigDict(dict(temperature=0.01))
  c.augment = ml_collections.ConfigDict(dict(      # the authors' (their +-4 px at 2 mm)
      shift_px=1, rotate_deg=10.0, brightness=0.2, gamma=(1.0, 1.0, 0.5, 1.5)))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, b1=0.9, b2=0.999, decay='constant', warmup_steps=0))
  if arg == 'paper':
    c.data.scale, c.data.workers = 1, 8
    c.data.sizes = dict(train=16213, val=2027, test=2028)   # the paper's UK Biobank split
    c.model.widths, c.model.last_width = (64, 128, 256), 512
    c.batch_size, c.optim.lr, c.augment.shift_px = 10, 1e-5, 5
    c.steps, c.log_every, c.ckpt_every = 200_000, 100, 2000
    c.starts = 1              # 200 steps at lr 1e-5 would not tell starts apart
  elif arg == 'pooled':
    c.model.encoder = 'pooled'
  elif arg == 'legacy':
    c.model.pools, c.data.normalise = '3', 'none'     # pools: 'auto' or a count
    c.steps, c.starts = 400, 1
    c.augment = ml_collections.ConfigDict(dict(shift_px=8, rotate_deg=0.0, brightness=0.2,
                                               gamma=(1.0,)))
  elif arg == 'tiny':
    c.data.sizes, c.data.scale = dict(train=8, val=4, test=4), 8
    c.data.workers = 0
    c.model.widths, c.model.last_width, c.model.embed_dim = (4, 4, 8), 8, 8
    c.batch_size, c.steps, c.log_every, c.ckpt_every = 4, 2, 1, 2
    c.starts = 1
  elif arg:
    raise ValueError(f'unknown config argument {arg!r} (use paper, pooled, legacy or tiny)')
  return c
