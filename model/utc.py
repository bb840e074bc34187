"""Timestamps as the contract writes them: UTC, whole seconds, `Z` (e.g. 2026-12-06T20:30:00Z)."""

from __future__ import annotations

import datetime


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def utc_text(moment: datetime.datetime | None = None) -> str:
    """`moment` (default: now), in UTC, to the second, with `Z` for the zone."""
    moment = utc_now() if moment is None else moment
    return moment.astimezone(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
