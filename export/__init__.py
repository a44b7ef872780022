"""Offline side: synthetic data, feature extraction, trainer, evaluation and ONNX export."""
