#!/usr/bin/env bash
# Set up the CPU environment (tools/setup_env.sh) and run the built-in demo; writes vpred_demo.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
exec "${VPRED_VENV:-.venv}/bin/python" -m vpred_core demo "$@"
