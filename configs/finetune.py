"""Fine-tuning: the paper's diagnosis model (ResNet34-3D + device-gated MoE, unified loss).

  python -m osteojax.main --config configs/finetune.py --workdir runs/finetune \
      --config.init.checkpoint=runs/tp_swav          # encoder from a pre-training workdir
  python -m osteojax.main --config configs/finetune.py:paper --workdir runs/finetune_paper

Ablations are config values: --config.head.moe=False (no MoE), --config.loss.bmd=0
--config.loss.level=0 --config.score=prob (class loss only), --config.init.checkpoint=''
(from scratch), --config.score=bmd (the raw predicted reading ranks),
--config.head.device_embed_std=0 (flax's embedding init), --config.loss.bmd_standardise=device
(BMD standardised per DXA device, which removes the cross-maker calibration),
--config.augment.intensity=legacy (the first build's +-150 HU jitter).
The model is evaluated on the validation split every epoch (vertebra AUC, all sites pooled) and
the best epoch's checkpoint makes the predictions. The default is sized for a 2-core CPU and
the default OsteoSim data (slim encoder, 32^3, 1,000 labeled training vertebrae, 16 epochs at
lr 3e-4); its intensity augmentation ('scanner'), class weighting ('balanced'), schedule
(16 epochs at 3e-4), the gate's device embedding scale (SD 1) and readout (the diagnosis
ranked by the T-score of the BMD head's reading at the device's reference, score='t') were
chosen on the validation split, never on test (tools/recipe_choices.py, rounds 'first',
'schedule', 'intensity' and 'readout'; docs/diagnosis.md, "Recipe choices"); a random
translation of the ROI (augment.shift_vox) lowered validation AUC in round 'spatial' and is off;
24 epochs or batches of 16 did not beat 16 epochs of 32 in round 'length' (converged). `:paper` gives
the paper's values (ResNet34-3D, batch 32, AdamW lr 1e-5, weight decay 0.1, 150 warm-up of
400 epochs) on the full-size data.
`:tiny` is for tests.
"""
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import osteosim  # noqa: E402  (configs are plain files, not a package)
import tp_swav  # noqa: E402


def get_config(arg=None):
  if arg not in (None, '', 'tiny', 'paper'):
    raise ValueError(f'unknown config argument {arg!r} (use paper or tiny)')
  c = ml_collections.ConfigDict()
  c.task = 'finetune'
  c.seed = 0                  # head init, batch order, augmentation (not the data)
  c.batch_size = 32           # global batch, split over devices
  c.epochs = 16
  c.eval_every_epochs = 1     # validation each epoch; the best epoch is kept
  c.select = 'auc+bmd_r2'     # the kept epoch maximises validation AUC + BMD R^2 (both tasks
                              # the model is trained for); 'auc': the AUC alone
  c.score = 't'               # what ranks the diagnosis: 'bmd' (the BMD head's reading, negated),
                              # 't' (its T-score at the device's reference for the level, negated)
                              # or 'prob' (the class head's P); chosen on validation
  c.log_every = 10
  c.ckpt_every = 31           # about one epoch of the default data
  c.data = osteosim.data_config(arg)
  c.model = tp_swav.encoder_config(arg)
  c.init = ml_collections.ConfigDict(dict(
      checkpoint=''))          # a pre-training workdir (tp_swav / swav); '' = from scratch
  c.head = ml_collections.ConfigDict(dict(
      moe=True, num_experts=3, hidden_dim=128,
      device_embed_std=1.0))   # init SD of the gate's device embedding D_I (0: flax's 1/sqrt(F),
                               # ~20x below the image embedding it is added to)
  c.loss = ml_collections.ConfigDict(dict(
      cls=1.0, bmd=1.0, level=0.5,    # paper eq. 4: alpha, beta, gamma; 0 turns a term off
      bmd_standardise='global',       # 'global': BMD in g/cm2, one mean/SD over all devices;
                                      # 'device': per device (ablation)
      class_weight='balanced'))       # 'none' | 'balanced' (CE weights n / (2 n_class))
  c.augment = ml_collections.ConfigDict(dict(
      flip_prob=0.5, intensity='scanner',   # augment.INTENSITY_MODES
      shift_vox=0))           # random translation by up to this many voxels per axis (0: none)
  c.optim = ml_collections.ConfigDict(dict(
      lr=3e-4, b1=0.9, b2=0.999, weight_decay=0.1, warmup_epochs=1, decay='cosine',
      ema_decay=0.0))         # > 0: evaluate and keep a moving average of the weights
  if arg == 'paper':
    c.data.labeled_scale = 1.0
    c.head.hidden_dim = 256
    c.epochs, c.optim.lr, c.optim.warmup_epochs, c.optim.decay = 400, 1e-5, 150, 'linear'
    c.eval_every_epochs = 5
    c.log_every, c.ckpt_every = 50, 1000
  elif arg == 'tiny':
    c.data.labeled_scale = 0.02
    c.head.hidden_dim = 8
    c.batch_size, c.epochs, c.log_every, c.ckpt_every = 8, 2, 1, 2
  return c
