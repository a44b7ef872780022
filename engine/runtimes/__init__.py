"""Built-in runtimes. Importing this package registers them; none of the modules imports torch at import time."""

from engine.runtimes import (  # noqa: F401  (registration side effect)
    onnxruntime,
    tensorrt,
    torch,
    triton,  # noqa: F401  (remote encoder; imports tritonclient only when built)
)
