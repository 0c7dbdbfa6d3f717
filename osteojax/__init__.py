"""osteojax: opportunistic osteoporosis diagnosis (TP-SwAV, MoE) and DXA-MRI alignment in JAX.

Random numbers: the project draws them with jax's threefry generator in its non-partitionable
form (`jax_threefry_partitionable=False`, set here on import, on every backend, so that a seed
gives the same streams everywhere). The partitionable form is for jit-sharded random arrays,
which osteojax does not use (every step runs under pmap, each example with its own key); on
XLA's CPU backend it compiles ~5-10x slower (a model's initialisation: 9 s against 2 s here).
"""
import jax as _jax

_jax.config.update('jax_threefry_partitionable', False)
