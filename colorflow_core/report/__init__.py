"""The chapter report: ``write_report(OUT, ...)`` → OUT/report.html, a static page over a colorize run's
outputs (per page: input, canvas, in-context and hi-res results, the references used; for the chapter:
the pages x references usage heatmap, unused references, low-similarity pages)."""
from .chapter import REPORT_FILE, low_similarity_threshold, write_report
from .heatmap import heatmap_layout
from .records import RECORD_FORMAT, read_chapter

__all__ = ["RECORD_FORMAT", "REPORT_FILE", "heatmap_layout", "low_similarity_threshold", "read_chapter", "write_report"]
