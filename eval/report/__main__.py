"""``python -m eval.report reports/ -o report.md``: see :mod:`eval.report.generate`."""

import sys

from compress.cli import run_main
from eval.report.generate import main

sys.exit(run_main(main))
