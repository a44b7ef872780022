"""Built-in runtimes. Importing this package registers them; none of the modules imports torch at import time."""

from engine.runtimes import onnxruntime, tensorrt, torch  # noqa: F401  (registration side effect)
