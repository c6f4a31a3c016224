"""emgkey: sEMG keystroke decoding on edge devices.

The ``emgkey`` package holds what both sides share (character set, device
profiles, session files, the serial protocol); ``emgkey.train``,
``emgkey.export``, ``emgkey.firmware_sim``, ``emgkey.edge_runtime`` and
``emgkey.benchmarks`` are the repository's top-level folders of the same names.
Nothing imported from here pulls torch.
"""

__version__ = "0.1.0"
