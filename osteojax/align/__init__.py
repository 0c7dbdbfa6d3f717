"""Method 2: the DXA-MRI aligner (contrastive spatial encoders, FFT correlation, registration, annotation transfer)."""
