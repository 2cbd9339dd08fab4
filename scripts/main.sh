#!/usr/bin/env bash
# The main job: build the offline model zoo, run the default sweep (all four technique
# families on the three default models, recipes/default.toml), analyse the weights,
# write report.md from the JSON reports, and print the comparison table.
# Time on an idle 2-core CPU: see README.md. Runs already in reports/ are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
$PY -m compress.zoo build
$PY -m eval.sweep recipes/default.toml "$@"
$PY -m eval.analyze smollm2-135m minilm-l6-sentiment bert2bert-punct --threads 2 --quiet
$PY -m eval.report reports/ -o report.md
$PY -m eval.compare reports/
