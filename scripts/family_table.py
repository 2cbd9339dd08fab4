"""Write the last full matrix run's table into README.md between its markers.

    COMPRESS_FULL_MATRIX=1 .venv/bin/python -m pytest tests/test_families.py
    .venv/bin/python scripts/family_table.py
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.family_matrix import RESULTS, render  # noqa: E402

START, END = "<!-- family-matrix:start -->", "<!-- family-matrix:end -->"

if not RESULTS.exists():
    sys.exit("no results: run the full matrix first (see this file's docstring)")
readme = ROOT / "README.md"
text = readme.read_text()
head, rest = text.split(START, 1)
_, tail = rest.split(END, 1)
table = render(json.loads(RESULTS.read_text()))
readme.write_text(f"{head}{START}\n{table}{END}{tail}")
print("README.md: family table updated")
