"""``seg-toolkit report RUN_DIR``: one self-contained HTML page about a run, from its folder alone.

* :mod:`.summary`: :func:`write_oof_summary`, the streaming pass over the OOF files and their
  targets that writes ``oof_summary.json`` (``cv`` calls it; the report does when it is absent);
* :mod:`.data`: :func:`compute_report_data` gathers the run folder's numbers (:class:`ReportData`);
* :mod:`.figures`, :mod:`.overlays`: the confusion chart and the OOF image overlays (matplotlib,
  each drawn once);
* :mod:`.html`: the HTML kit shared with the learning curves and the data audit;
* :mod:`.page`: :func:`build_report` writes ``<run>/report/``.
"""

from __future__ import annotations

from .data import ReportData, compute_report_data
from .page import build_report
from .summary import Example, read_oof_summary, write_oof_summary

__all__ = ["Example", "ReportData", "build_report", "compute_report_data", "read_oof_summary", "write_oof_summary"]
