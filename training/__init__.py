"""Offline multi-task training (PyTorch): data, models, balancers, trainer, ONNX export."""
