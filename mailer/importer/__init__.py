"""Lists in and out: the CSV import engine and the export.

* `encoding` — which encoding a file is in, checked over the whole file before anything is written;
* `table` — rows with their physical line numbers, unterminated quotes found and reported;
* `columns` — header names, `--map`, and the export formats of Mailchimp, Substack, Buttondown,
  listmonk and Ghost;
* `engine` — parsing (in a helper process for big files), de-duplication, the batched upsert and
  its report;
* `export` — the list as CSV.
"""

from .engine import ImportReport, ImportStopped, Rejection, import_csv
from .export import EXPORT_COLUMNS, export_csv

__all__ = ["ImportReport", "ImportStopped", "Rejection", "import_csv", "export_csv", "EXPORT_COLUMNS"]
