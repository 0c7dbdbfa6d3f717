"""Evaluate a trained aligner on a BodySim split: retrieval and verification, tables and PNGs.

Retrieval ranks, for each DXA (query), all MRIs of the split by similarity (and the reverse);
verification scores all N^2 DXA / MRI pairs as match / non-match. Metrics come from
osteojax.evaluate.metrics; the similarity is the same max-over-translations FFT correlation as in
training (a 1 x 1 map for the pooled baseline, i.e. the cosine of the embeddings).
"""
from __future__ import annotations

import json
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from osteojax.align import bodysim_registration as br  # noqa: E402
from osteojax.align import encoders, pairs  # noqa: E402
from osteojax.data import io  # noqa: E402
from osteojax.evaluate import metrics  # noqa: E402


def scores(sim) -> dict:
  """All metrics of a similarity matrix [N, N] (rows DXA, columns MRI)."""
  r = metrics.retrieval_metrics(sim)
  r_rev = metrics.retrieval_metrics(np.asarray(sim).T)
  v = metrics.verification_metrics(sim)
  return dict(**r, **v, mri_to_dxa={k: r_rev[k] for k in ('recall@1', 'recall@5', 'recall@10',
                                                          'mean_rank')})


def similarity_of_run(workdir: str, split: str = 'test', data_dir: str | None = None,
                      limit: int | None = None):
  """(sim [N, N], config, step, placement, reference [N, N]) of the checkpoint in workdir on a
  BodySim split; reference: the keypoint-geometry retrieval reference of the same pairs
  (bodysim_registration.keypoint_geometry_similarity).

  placement: for spatial encoders, where the aligner's own correlation puts each MRI map on
  its DXA map against the true placement (bodysim_registration.placement_check); registration
  needs this, retrieval does not. None for the pooled baseline.
  """
  model, variables, config, step = encoders.load_encoders(workdir)
  data = pairs.load(config, split, limit, data_dir)
  dxa, mri = pairs.select_channels(data, config)
  pairs.check_inputs(dxa, mri, len(config.model.dxa_channels), len(config.model.mri_channels))
  fd, fm = encoders.embed(model, variables, dxa, mri)
  placement = None
  if config.model.encoder == 'spatial' and 'matrix_mri_to_dxa' in data:
    placement = br.placement_check(fd, fm, [br.truth_transform(m)
                                            for m in data['matrix_mri_to_dxa']],
                                   encoders.stride(config))
  known = np.isfinite(data['keypoints_dxa']).all() and np.isfinite(data['keypoints_mri']).all()
  return (encoders.similarity_all(fd, fm), config, step, placement,
          br.keypoint_geometry_similarity(data) if known else None)


def plot_curves(sim, out_prefix: str, title: str) -> list[str]:
  """ROC (all pairs) and recall@K PNGs; returns their paths."""
  s = np.asarray(sim)
  y = np.eye(len(s), dtype=int).ravel()
  fpr, tpr, _ = skm.roc_curve(y, s.ravel())
  paths = []
  fig, ax = plt.subplots(figsize=(4, 4))
  ax.plot(fpr, tpr, lw=1.5)
  ax.plot([0, 1], [0, 1], 'k:', lw=0.8)
  ax.set_xscale('symlog', linthresh=0.01)
  ax.set_xlabel('false positive rate (log above 0.01)')
  ax.set_ylabel('true positive rate')
  ax.set_title(f'{title}\nverification ROC, AUC {skm.roc_auc_score(y, s.ravel()):.4f}', fontsize=8)
  fig.tight_layout()
  paths.append(f'{out_prefix}_roc.png')
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)
  fig, ax = plt.subplots(figsize=(4, 4))
  k = np.arange(1, len(s) + 1)
  ax.plot(k, metrics.recall_curve(s), lw=1.5, label='DXA -> MRI')
  ax.plot(k, metrics.recall_curve(s.T), lw=1.0, ls='--', label='MRI -> DXA')
  ax.plot(k, k / len(s), 'k:', lw=0.8, label='chance')
  ax.set_xscale('log')
  ax.set_xlabel('K')
  ax.set_ylabel('recall@K')
  ax.legend(fontsize=7)
  ax.set_title(f'{title}\nretrieval among {len(s)}', fontsize=8)
  fig.tight_layout()
  paths.append(f'{out_prefix}_recall_at_k.png')
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)
  return paths


def markdown_row(name: str, m: dict) -> str:
  return (f'| {name} | {100 * m["recall@1"]:.1f} | {100 * m["recall@5"]:.1f} | '
          f'{100 * m["recall@10"]:.1f} | {m["mean_rank"]:.2f} | {m["auc"]:.4f} | '
          f'{100 * m["eer"]:.2f} | {m["tpr_at_fpr"]:.3f} |')


REFERENCE = 'reference: keypoint geometry (truth, pixel grid)'
HEADER = ('| run | R@1 % | R@5 % | R@10 % | mean rank | AUC | EER % | TPR@FPR=1% |\n'
          '|---|---|---|---|---|---|---|---|')


def evaluate_run(workdir: str, split: str = 'test', data_dir: str | None = None,
                 out_dir: str | None = None, limit: int | None = None) -> dict:
  """Evaluate workdir's checkpoint (the one chosen on validation when the run kept one, else
  the newest); writes eval_<split>.{json,md} and PNGs. Beside the aligner's metrics: the
  keypoint-geometry reference on the same pairs and the aligner's recall@1 as a fraction of
  it."""
  sim, config, step, placement, ref = similarity_of_run(workdir, split, data_dir, limit)
  m = scores(sim)
  mr = scores(ref) if ref is not None else None
  frac = m['recall@1'] / mr['recall@1'] if mr and mr['recall@1'] else float('nan')
  out_dir = out_dir or workdir
  os.makedirs(out_dir, exist_ok=True)
  trained = encoders.trained_seed(workdir, config)
  name = (f'{config.model.encoder} DXA {"+".join(config.model.dxa_channels)} / MRI '
          f'{"+".join(config.model.mri_channels)}, tau {config.loss.temperature}, '
          f'seed {config.seed}' + (f' (start seed {trained})' if trained != config.seed else ''))
  pngs = plot_curves(sim, os.path.join(out_dir, f'eval_{split}'), name)
  res = dict(workdir=os.path.abspath(workdir), step=int(step), split=split, n=len(sim),
             encoder=config.model.encoder, dxa_channels=list(config.model.dxa_channels),
             mri_channels=list(config.model.mri_channels),
             temperature=config.loss.temperature, seed=config.seed, trained_seed=trained,
             data_seed=config.data.seed, augment=config.augment.to_dict(),
             shift_px=config.augment.shift_px, normalise=config.data.get('normalise', 'none'),
             scale=encoders.scale_summary(config), metrics=m, reference=mr,
             recall1_fraction_of_reference=frac, placement=placement, pngs=pngs,
             generated_data=not (config.data.get('manifest') and not data_dir))
  io.atomic_write_text(os.path.join(out_dir, f'eval_{split}.json'), json.dumps(res, indent=1))
  source = ('the manifest ' + config.data.manifest if config.data.get('manifest') and not data_dir
            else 'generated BodySim data')
  ref_row = f'{markdown_row(REFERENCE, mr)}\n' if mr else ''
  ref_line = f'Recall@1 is {frac:.0%} of the reference\'s. ' if mr else ''
  md = (f'# Aligner evaluation ({split} split of {source}, N = {len(sim)}, step {step})\n\n'
        f'{HEADER}\n{markdown_row(name, m)}\n{ref_row}\n{ref_line}MRI -> DXA: R@1 '
        f'{100 * m["mri_to_dxa"]["recall@1"]:.1f} %, mean rank '
        f'{m["mri_to_dxa"]["mean_rank"]:.2f}.\n')
  if placement:
    md += f'\nPlacement, {br.placement_sentence(placement)}\n'
  io.atomic_write_text(os.path.join(out_dir, f'eval_{split}.md'), md)
  print(md, flush=True)
  return res
