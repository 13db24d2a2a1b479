"""The data report of a dataset root: a static HTML page (`<root>/reports/index.html`) with its plots and gallery.

`collect` streams the root shard by shard (stored stage reports, reject tables, the columns of the stage tables
it needs, run reports, the mask audit) into frozen figures; `plots` draws them with matplotlib's Agg canvas;
`gallery` picks a deterministic sample of exported training samples per task from the tar indexes and draws
their masks on their frames; `page` writes the HTML; `report.write_report` ties them together. The page needs
no server, no CDN and no script: every link is relative, so the `reports/` folder can be copied anywhere.
Importing this package is light; matplotlib, Pillow and OpenCV load inside the functions that draw.
"""

from __future__ import annotations

from flows.reporting.report import REPORT_ASSETS_DIR, REPORT_INDEX, write_report, write_report_safely

__all__ = ["REPORT_ASSETS_DIR", "REPORT_INDEX", "write_report", "write_report_safely"]
