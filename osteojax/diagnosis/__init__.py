"""Method 1: opportunistic osteoporosis diagnosis on CT vertebrae (TP-SwAV pre-training, device-gated MoE fine-tuning, baselines, predict)."""
