"""Encoders chosen by config.model.name, heads, the device-gated MoE, the aligner's encoders."""
from osteojax.errors import ConfigError
from osteojax.models import nnformer3d, resnet3d, swin3d, vit3d

# name -> (module, the config.model field holding its settings; '' = config.model itself)
ENCODERS = {'resnet3d': (resnet3d, ''), 'swin3d': (swin3d, 'swin'), 'vit3d': (vit3d, 'vit'),
            'nnformer3d': (nnformer3d, 'nnformer')}


def encoder_from_config(c):
  """The 3-D encoder named by config.model: 'resnet3d' (its fields at the top level of
  config.model), 'swin3d' (config.model.swin), 'vit3d' (config.model.vit) or 'nnformer3d'
  (config.model.nnformer). Each maps [B, D, H, W, 1] to [B, F]."""
  if c.name not in ENCODERS:
    raise ConfigError(f'unknown config.model.name {c.name!r} (known: {", ".join(ENCODERS)})')
  module, field = ENCODERS[c.name]
  return module.encoder_from_config(c[field] if field else c)
