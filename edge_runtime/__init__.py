"""What runs on the device (installed as ``emgkey.edge_runtime``). Never imports torch."""
