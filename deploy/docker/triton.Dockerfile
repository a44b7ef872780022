# Triton Inference Server 2.51 (NGC release 24.10) with onnxruntime for the Python-backend repository
# that `dsanet triton-repo BUNDLE OUT` writes by default (uint8 frames on the wire, normalised here).
# For `--backend onnxruntime` or `--backend tensorrt` repositories the plain NGC image is enough.
FROM nvcr.io/nvidia/tritonserver:24.10-py3
RUN pip install --no-cache-dir "onnxruntime-gpu>=1.20,<2" "numpy<2"
