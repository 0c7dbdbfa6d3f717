"""DXA-MRI alignment: FFT correlation, aligner training, registration."""
