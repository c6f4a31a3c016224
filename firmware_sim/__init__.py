"""Simulated armband (installed as ``emgkey.firmware_sim``): users typing, sEMG, firmware, serial link."""
