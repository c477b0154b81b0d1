#!/usr/bin/env bash
# Create (or reuse) the virtual environment for the demo and the tests, CPU only.
#   torch==2.13.0 first (a CPU build), then the test extras constrained to that torch, then k-diffusion and
#   torchvision with --no-deps: their own dependency lists would replace the CPU torch with a multi-GB CUDA build.
#   vpred_core.cli.kdiffusion explains how k-diffusion's samplers are then imported (docs/TESTING.md).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VPRED_VENV:-.venv}"
PY="${PYTHON:-python3}"
KDIFFUSION_VERSION="0.1.1.post1"
TORCHVISION_VERSION="0.28.0"  # the release built against torch 2.13; only its Python transforms are used

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -c tools/constraints-cpu.txt -e ".[test]"
"${PIP[@]}" -c tools/constraints-cpu.txt --no-deps "k-diffusion==${KDIFFUSION_VERSION}" "torchvision==${TORCHVISION_VERSION}"
"$VENV/bin/python" - <<'PYCHECK'
import torch
assert not torch.version.cuda, f"expected a CPU torch, got CUDA {torch.version.cuda}"
print(f"environment ready: torch {torch.__version__}")
PYCHECK
