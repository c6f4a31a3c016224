"""Distillation, quantization and export (installed as ``emgkey.export``). Needs torch."""
