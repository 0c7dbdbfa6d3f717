"""Alice pre-training of nnFormer's encoder (the paper's Table 2 row "nnFormer / Alice").

  python -m osteojax.main --config configs/alice.py --workdir runs/alice
  python -m osteojax.main --config configs/finetune.py --workdir runs/alice_ft \
      --config.model.name=nnformer3d --config.init.checkpoint=runs/alice --config.loss.bmd=0 \
      --config.loss.level=0 --config.head.moe=False --config.score=prob   # class loss, one head

Same data, batch and budget as configs/tp_swav.py (the paper trains every pre-training method
with one recipe), at the learning rate 1e-4 of the paper's pre-training (a transformer: Swin-T
TP-SwAV diverged at the CPU default 1e-3); the encoder `model.nnformer` (slim: embedding 24,
heads 1-2-4-8 at 32^3; `:paper` embedding 96, heads 3-6-12-24 at 64^3). A batch holds
batch_size pairs: a vertebra and another patient's vertebra of the same level. Alice's own
settings (its public code: alibaba-damo-academy/alice, main-DDP.py): 75% of the voxels masked
in columns of cell x cell squares (its 16 at 64^3 crops, scaled to 8 at 32^3), teacher
temperature 0.01 after a warm-up from 0.008 (30 epochs at `:paper`; none in the CPU budget of
2 epochs), student temperature 0.1, centre momentum 0.9, loss weights 1 / 1 / 10; its head
(hidden 2048, bottleneck 256, output 512) and CASA (8 heads of 64, inner 2048) at `:paper`,
smaller on CPU.

Teacher momentum and last-layer freeze: Alice's at `:paper` (momentum 0.996 -> 1 along a cosine,
the last layers frozen for the first epoch). They were set for long runs (its code's default is
1000 epochs, `:paper` trains 300): a teacher time constant 1 / (1 - 0.996) = 250 steps and a
one-epoch freeze are a sliver of such a run. In the CPU budget (94 steps, 47 an epoch on the
default data) the same values would leave the teacher 82% its random initialisation at the end
(the product of the momenta: it would barely move) and the last layers untrained for half the
run. So the CPU default scales both to the budget, by this rule: a teacher time constant of
about a tenth of the run, 1 / (1 - m) = 10 steps (m = 0.9; the initialisation's share at the
end is then 0.6%), and a freeze of about a twentieth, 0.1 epoch (round(0.1 x 47) = 5 steps).
A longer run should move both back towards Alice's.
"""
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tp_swav  # noqa: E402


def get_config(arg=None):
  c = tp_swav.get_config(arg)
  c.task = 'alice'
  del c['views'], c['swav']
  c.model.name = 'nnformer3d'
  c.optim.lr = 1e-4
  c.alice = ml_collections.ConfigDict(dict(
      out_dim=64, head_hidden_dim=256, head_bottleneck_dim=64,     # Alice: 512, 2048, 256
      casa_heads=4, casa_head_dim=16, casa_inner_dim=256,          # Alice: 8, 64, 2048
      mask_ratio=0.75, mask_cell=8,
      student_temp=0.1, teacher_temp=0.01, warmup_teacher_temp=0.008,
      teacher_temp_warmup_epochs=0.0,
      momentum_teacher=0.9, center_momentum=0.9,       # Alice: 0.996 (see the docstring)
      freeze_last_layer_epochs=0.1,                    # Alice: 1 epoch (see the docstring)
      lambda_cls=1.0, lambda_patch=1.0, lambda_recon=10.0))
  if arg == 'paper':
    a = c.alice
    a.out_dim, a.head_hidden_dim, a.head_bottleneck_dim = 512, 2048, 256
    a.casa_heads, a.casa_head_dim, a.casa_inner_dim = 8, 64, 2048
    a.mask_cell, a.teacher_temp_warmup_epochs = 16, 30.0
    a.momentum_teacher, a.freeze_last_layer_epochs = 0.996, 1.0
  elif arg == 'tiny':
    a = c.alice
    a.out_dim, a.head_hidden_dim, a.head_bottleneck_dim = 8, 16, 8
    a.casa_heads, a.casa_head_dim, a.casa_inner_dim = 2, 4, 16
    a.mask_cell, a.freeze_last_layer_epochs = 4, 0.5
  return c
