"""Partitions of the quality marts: event-time days and lots.

Lot ids come from the fab as they are (quotes, slashes, unicode). Dagster
refuses a few substrings in partition keys, so such a lot gets an encoded key
that decodes back to the exact lot id.
"""

from __future__ import annotations

import base64
import datetime as dt

import dagster as dg

from chipq_pipelines.warehouse.types import ValidationBounds

#: The first day a partition exists for; older event times are rejected at landing.
FIRST_EVENT_DATE = dt.date(2020, 1, 1)
LANDING_BOUNDS = ValidationBounds(
    earliest_event_time=dt.datetime.combine(FIRST_EVENT_DATE, dt.time(), tzinfo=dt.UTC),
    max_future=dt.timedelta(days=1),
)

daily_partitions = dg.DailyPartitionsDefinition(start_date=FIRST_EVENT_DATE.isoformat(), timezone="UTC", end_offset=1)
lot_partitions = dg.DynamicPartitionsDefinition(name="lots")

_ENCODED_PREFIX = "lot~b64~"
# Substrings Dagster does not accept in a partition key, plus our own prefix.
_UNSAFE = ("...", "\a", "\b", "\f", "\n", "\r", "\t", "\v", "\0", ",", "[", "]", _ENCODED_PREFIX)


def lot_partition_key(lot_id: str) -> str:
    """The dynamic-partition key of a lot: the lot id itself when Dagster accepts it."""
    if lot_id and not any(s in lot_id for s in _UNSAFE) and lot_id.strip() == lot_id and len(lot_id) <= 200:
        return lot_id
    return _ENCODED_PREFIX + base64.urlsafe_b64encode(lot_id.encode()).decode()


def lot_id_from_partition_key(key: str) -> str:
    """Inverse of ``lot_partition_key``."""
    if key.startswith(_ENCODED_PREFIX):
        return base64.urlsafe_b64decode(key[len(_ENCODED_PREFIX) :].encode()).decode()
    return key
