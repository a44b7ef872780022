#!/usr/bin/env bash
# The Triton Inference Server used by the scale-out tests and bench/triton_encoder.py (idempotent).
#
# Why a venv of its own: the `tritonserver` binary (2.51) ships inside the nvidia-pytriton wheel, which
# pins numpy<2, while the project runs numpy 2; Triton's Python backend runs the encoder through
# onnxruntime (the wheel has no onnxruntime backend), so onnxruntime goes into this venv too.
# Installs into ${TRITON_VENV:-.cache/triton-venv}; tests find it there (tests/fixtures/triton.py) and,
# with CI=true, fail when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TRITON_VENV:-.cache/triton-venv}"
PYTHON="${PYTHON:-python3.11}"
STAMP="$VENV/.installed-pytriton-0.7.0"
if [ -f "$STAMP" ]; then
    echo "triton-venv: present ($VENV)"
    exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "nvidia-pytriton==0.7.0" "onnxruntime==1.32.0" "numpy==1.26.4"
"$VENV/bin/python" - <<'PY'
import pathlib, pytriton
root = pathlib.Path(pytriton.__file__).parent / "tritonserver"
assert (root / "bin" / "tritonserver").is_file(), f"no tritonserver binary under {root}"
print("triton-venv: tritonserver at", root / "bin" / "tritonserver")
PY
touch "$STAMP"
