"""Run reports: ``report.html`` of a run directory and a compare page of several runs."""

from icdistill.reporting.compare import write_compare
from icdistill.reporting.run_page import REPORT_FILE, render_run, write_run_report
from icdistill.reporting.run_summary import RunSummary, load_run

__all__ = ["REPORT_FILE", "RunSummary", "load_run", "render_run", "write_compare", "write_run_report"]
