"""Event identity for window groups: (entity keys, event id), and which version wins.

A re-delivered event is one event; a re-pushed id with new content is a correction and the
latest version wins on every path. "Latest" is `event_seq` — "" for rows of the source's own
files, `<stream entry>:<row>` for pushed rows, so pushes come after the files and in arrival
order — then storage order (across days, which have no common order, the later event
time). The online store applies the same rule by arrival (`storage/lua/write_events.lua`:
the last write of an id replaces the earlier one).
"""

from __future__ import annotations

import polars as pl

from skewless.language.feature_group import EVENT_ID, EVENT_SEQ, FeatureGroup


def latest_versions(group: FeatureGroup, frame: pl.LazyFrame) -> pl.LazyFrame:
    """One row per event identity: the highest `event_seq`, then the last in `frame`'s order
    (storage or arrival order: within one push, the later row is the correction)."""
    keys = group.entity.key_columns
    return frame.sort(EVENT_SEQ, maintain_order=True).unique(
        subset=[*keys, EVENT_ID], keep="last", maintain_order=True
    )
