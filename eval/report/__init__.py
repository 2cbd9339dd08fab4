"""The run report: its schema (:mod:`eval.report.schema`) and the written report.

One JSON file per run, schema-versioned and written atomically, is the record of
every number the suite quotes; :mod:`eval.report.schema` defines it and reads it back.
``python -m eval.report reports/ -o report.md`` (:mod:`eval.report.generate`) turns a
folder of them into the written report: sections in :mod:`eval.report.overview`,
:mod:`eval.report.quality` and :mod:`eval.report.costs`, published numbers in
``anchors.toml``.
"""

from eval.report.schema import (
    LIBRARIES,
    SCHEMA,
    SCHEMA_VERSION,
    Report,
    ReportError,
    dig,
    environment,
    fmt_pm,
    fmt_value,
    git_commit,
    pipeline_label,
    read_reports,
    report_filename,
    run_key,
    runs_by_model,
    slug,
    validate_report,
    within_noise,
)

__all__ = [
    "LIBRARIES",
    "SCHEMA",
    "SCHEMA_VERSION",
    "Report",
    "ReportError",
    "dig",
    "environment",
    "fmt_pm",
    "fmt_value",
    "git_commit",
    "pipeline_label",
    "read_reports",
    "report_filename",
    "run_key",
    "runs_by_model",
    "slug",
    "validate_report",
    "within_noise",
]
