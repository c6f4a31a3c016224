"""Training (installed as ``emgkey.train``): CTC models and their teachers. Needs torch."""
