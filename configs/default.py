"""The embedded default job that `make run` runs: the whole vertical slice on a 2-core CPU.

  python -m osteojax.main --config configs/default.py --workdir runs/default

Generates the default OsteoSim data set (1,513 unlabeled pre-training vertebrae at scale 0.05;
1,722 labeled train/valid/test vertebrae at scale 0.2; 32^3 ROIs at 1.8 mm), builds the texture
pools, pre-trains the slim ResNet34-3D with TP-SwAV (configs/tp_swav.py), fine-tunes it with
the device-gated MoE and the unified loss (configs/finetune.py), prints the per-site
vertebra- and patient-level table of the test split (threshold from validation), then scores
the clinician's baselines (L1 trabecular HU rules, radiomics + logistic regression) and the two
oracles on the same split and draws them beside the model (<workdir>/compare), writing ROC
curves, predictions and TensorBoard runs under the workdir. Every stage is cached / resumable.
Full-size runs use the stage configs with `:paper` on an accelerator (see README).
"""
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import finetune  # noqa: E402  (configs are plain files, not a package)
import osteosim  # noqa: E402
import tp_swav  # noqa: E402


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.task = 'pipeline'
  c.osteosim = osteosim.get_config(arg)
  c.pretrain = tp_swav.get_config(arg)
  c.finetune = finetune.get_config(arg)
  c.data = c.finetune.data.copy_and_resolve_references()   # shared by every stage
  c.compare = ml_collections.ConfigDict(dict(
      ct_only_patients=1000 if arg == 'tiny' else 20000,    # reference draws per site
      background=True))   # baselines in a thread while the model trains (one process only)
  for stage in (c.osteosim, c.pretrain, c.finetune):
    del stage['data']
  return c
