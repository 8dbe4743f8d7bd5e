"""The admin's base classes that every app's admin.py builds on: lists of big tables, and records only services write.

A plain module, not an app's admin: core is not an installed app, so the admin's autodiscovery never imports it, and
it registers no model."""

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.utils.functional import cached_property


class EstimatedCountPaginator(Paginator):
    """Counts a whole big table from PostgreSQL's own estimate instead of COUNT(*), which reads every row (the
    ledger holds millions). The estimate (pg_class.reltuples) is kept up to date by autovacuum; a filtered list, a
    small table (under EXACT_BELOW rows) and any other database are counted exactly."""

    EXACT_BELOW = 10_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if isinstance(queryset, QuerySet) and not queryset.query.where:
            connection = connections[queryset.db]
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                        [connection.ops.quote_name(queryset.model._meta.db_table)],
                    )
                    row = cursor.fetchone()
                if row and row[0] >= self.EXACT_BELOW:
                    return int(row[0])
        return super().count


class LargeTableAdmin(admin.ModelAdmin):
    """For tables that grow with the platform (ledger, audit log, parking stays): no second COUNT(*) for the
    "N total" link, and the whole table's count estimated. Filters over such tables should offer fixed choices, not
    the distinct values of a column (which reads the whole table), and date_hierarchy is left out for the same
    reason (its month and day links are a DISTINCT over every row); a date filter does that job."""

    show_full_result_count = False
    paginator = EstimatedCountPaginator


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records that only the services write (the books, the market's rounds and work): staff read them here, and
    correct them through the services (a ledger reversal, a refund), never by editing a row."""

    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
