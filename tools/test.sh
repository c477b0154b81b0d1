#!/usr/bin/env bash
# Set up the CPU test environment (tools/setup_env.sh), lint with ruff, run the whole test suite.
# Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
"${VPRED_VENV:-.venv}/bin/ruff" check .
exec "${VPRED_VENV:-.venv}/bin/python" -m pytest "$@"
