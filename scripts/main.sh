#!/usr/bin/env bash
# The main job: build the offline model zoo, run the main sweep (all four technique
# families on the three default models), analyse the weights, write report.md, print the
# comparison table and check this machine's numbers against the committed reference
# reports. Each step prints the time elapsed and the time left for the whole job.
#
#   bash scripts/main.sh            # lean protocol (recipes/main.toml) into runs/main/:
#                                   # runs/main/reports/*.json, runs/main/report.md,
#                                   # runs/main/refcheck.json (about 45 min with setup)
#   bash scripts/main.sh --full     # the reference protocol (recipes/default.toml) into
#                                   # reports/ and report.md (hours)
#   bash scripts/main.sh --dry-run  # the steps and the estimate
#
# Other arguments go to eval.sweep. Time on an idle 2-core CPU: README.md ("Main job
# time"). Runs whose report already exists in the output folder are skipped, so an
# interrupted job resumes where it stopped; the committed reports/ are the reference the
# lean job is checked against (eval.refcheck), never a cache for it. See eval/mainjob.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m eval.mainjob "$@"
