"""Subscribers: the rules (`service`: statuses, suppression ranking, resubscribe, restore, purge) and
the CSV import/export engine (`importer`). CLI, web, import and webhooks call these."""

from .importer import EXPORT_COLUMNS, ImportReport, ImportStopped, Rejection, export_csv, import_csv
from .erasure import ERASED, ErasureReport, erase_subscriber, tombstone_key
from .service import (Restoration, SubscriberView, add_subscriber, count_subscribers, iter_subscribers,
                      remove_subscriber, restore_subscriber, set_subscriber_status, show_subscriber)

__all__ = ["ERASED", "EXPORT_COLUMNS", "ErasureReport", "ImportReport", "ImportStopped", "Rejection", "Restoration",
           "SubscriberView", "add_subscriber", "count_subscribers", "erase_subscriber", "export_csv", "import_csv",
           "iter_subscribers", "remove_subscriber", "restore_subscriber", "set_subscriber_status", "show_subscriber",
           "tombstone_key"]
