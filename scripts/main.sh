#!/usr/bin/env bash
# The main job: the identity baseline on the three default models, one JSON report
# each in reports/, then the comparison table.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
$PY -m compress.zoo build
for model in smollm2-135m minilm-l6-sentiment bert2bert-punct; do
  $PY -m eval.run --model "$model" --recipe identity --threads 2
done
$PY -m eval.compare reports/
