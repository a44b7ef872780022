"""Model definition and inference runtimes behind one interface.

Importing this package never imports torch: torch is loaded lazily by the torch/TensorRT runtimes
and by the model definition modules under ``engine.model``.
"""
