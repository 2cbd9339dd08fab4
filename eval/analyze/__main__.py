"""``python -m eval.analyze MODEL... --out reports/analysis/``: see :mod:`eval.analyze`."""

from compress.errors import run_main
from eval.analyze.cli import main

raise SystemExit(run_main(main))
