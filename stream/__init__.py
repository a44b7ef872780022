"""Live pipeline: camera readers, snippet sampling, embedding windows, events, sinks, metrics, service.

Importing this package never imports torch (a camera box may run on ONNX Runtime alone).
"""

__version__ = "0.1.0"
