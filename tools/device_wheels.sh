#!/usr/bin/env bash
# Wheels that the lent GPU machines' image lacks, for its Python (3.12, x86-64), into .whl/ (ignored by
# git). Those machines reach no package index, so the `device` tool carries the folder (carry: [".whl"])
# and tools/device_check.py's command installs it there. The image has torch, transformers, peft,
# accelerate, timm, torchmetrics, safetensors, tensorboard, pytest and hypothesis, not these; the
# versions are the ones this repository's tests run against.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info && touch .git/info/exclude
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
PY=${PY:-.venv/bin/python}
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    "diffusers==$("$PY" -c 'import diffusers; print(diffusers.__version__)')" \
    "torchao==$("$PY" -c 'import torchao; print(torchao.__version__)' 2>/dev/null)" \
    importlib_metadata
ls -l .whl
