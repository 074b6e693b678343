"""Lists in and out: the CSV import engine and the export.

* `encoding` — which encoding a file is in, checked over the whole file before anything is written;
* `table` — rows with their physical line numbers, unterminated quotes found and reported;
* `values` — cell values: header names, languages, time zones, dates, booleans;
* `formats` — the export formats of Mailchimp, Substack, Buttondown, listmonk and Ghost;
* `columns` — which column holds what (header names, `--map`, a recognised format);
* `parse` — rows validated, normalised and de-duplicated (in a helper process for big files);
* `engine` — the batched upsert and its decisions; `report` — what it did, and the summary;
* `export` — the list as CSV.
"""

from .engine import import_csv
from .report import ImportReport, ImportStopped, Rejection
from .export import EXPORT_COLUMNS, export_csv

__all__ = ["ImportReport", "ImportStopped", "Rejection", "import_csv", "export_csv", "EXPORT_COLUMNS"]
