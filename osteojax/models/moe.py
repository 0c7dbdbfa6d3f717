"""The fine-tuning decoder: device-gated mixture of experts over multi-task heads (paper 2.2-2.3).

  P = encoder(x)                         image embedding [B, F]
  D = Embed(device)                      learned DXA-device embedding [B, F]
  alpha = softmax(f_g(P + D))            gate over N experts, sums to 1 (f_g: one Dense layer)
  out = sum_i alpha_i E_i(P)             each expert predicts every task

The N experts are one parameter set stacked on a leading axis and applied with `nn.vmap`
(no Python loop). Without MoE (`moe=False`) one expert head is applied directly and the
device is not used. Outputs, split from the expert's last layer: osteoporosis logits [B, 2],
standardised BMD [B], vertebra-level logits [B, 18] (T1..T12, L1..L6).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

NUM_CLASSES = 2
NUM_LEVELS = 18
OUT_DIM = NUM_CLASSES + 1 + NUM_LEVELS


class Expert(nn.Module):
  """One expert: MLP [B, F] -> [B, OUT_DIM] (osteoporosis logits | BMD | level logits)."""
  hidden_dim: int = 128

  @nn.compact
  def __call__(self, p):
    h = nn.relu(nn.Dense(self.hidden_dim, name='hidden')(p))
    return nn.Dense(OUT_DIM, name='out')(h)


def split_outputs(out) -> dict:
  """[..., OUT_DIM] -> dict(osteo_logits [..., 2], bmd [...], level_logits [..., 18])."""
  return dict(osteo_logits=out[..., :NUM_CLASSES], bmd=out[..., NUM_CLASSES],
              level_logits=out[..., NUM_CLASSES + 1:])


class DiagnosisHead(nn.Module):
  """Multi-task head on the image embedding, gated by the DXA device when `moe`.

  p: [B, F] embedding, device: [B] int device index -> dict of outputs + 'gate' [B, N].
  """
  num_experts: int = 3
  hidden_dim: int = 128
  num_devices: int = 3
  moe: bool = True
  device_embed_std: float = 0.0   # init SD of D_I; 0: flax's default, 1/sqrt(F) (~0.09 at F=128)

  @nn.compact
  def __call__(self, p, device):
    if not self.moe:
      out = Expert(self.hidden_dim, name='expert')(p)
      return {**split_outputs(out), 'gate': jnp.ones((p.shape[0], 1), p.dtype)}
    experts = nn.vmap(Expert, variable_axes={'params': 0}, split_rngs={'params': True},
                      in_axes=None, out_axes=1, axis_size=self.num_experts)
    e = experts(self.hidden_dim, name='experts')(p)                     # [B, N, OUT_DIM]
    init = (nn.initializers.normal(self.device_embed_std) if self.device_embed_std
            else nn.linear.default_embed_init)
    d = nn.Embed(self.num_devices, p.shape[-1], embedding_init=init,
                 name='device_embedding')(device)
    alpha = nn.softmax(nn.Dense(self.num_experts, name='gate')(p + d))   # [B, N]
    out = jnp.einsum('bn,bno->bo', alpha, e)
    return {**split_outputs(out), 'gate': alpha}


class DiagnosisModel(nn.Module):
  """Encoder (same parameter names as the pre-training model's 'encoder') + DiagnosisHead.

  x: [B, D, H, W, 1], device: [B] int -> outputs dict (see DiagnosisHead).
  """
  encoder: nn.Module
  head: DiagnosisHead

  def __call__(self, x, device, train: bool = True):
    return self.head(self.encoder(x, train), device)
