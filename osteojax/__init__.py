"""osteojax: opportunistic osteoporosis diagnosis (TP-SwAV, MoE) and DXA-MRI alignment in JAX."""
