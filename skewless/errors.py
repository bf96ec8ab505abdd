"""Errors raised by skewless.

Every error names the thing at fault (group, feature, column, partition, key) so that a
failed Dagster run tells its reader what to fix without opening a debugger.
"""

from __future__ import annotations


class SkewlessError(Exception):
    """Base class: catch this to handle any skewless failure."""


class DefinitionError(SkewlessError):
    """A feature definition (entity, source, group, service) is invalid when loaded."""


class SourceDataError(SkewlessError):
    """Source data does not match what its definition promises (columns, dtypes, times)."""


class TransformationError(SkewlessError):
    """A group's transformation failed or returned a frame that breaks its declared schema."""


class OnlineStoreError(SkewlessError):
    """The online store (Redis) could not be reached or refused a write."""


class OnlineStoreTimeout(OnlineStoreError):
    """The online store did not answer within a bounded read's timeout (it may be hung)."""


class AccessDenied(SkewlessError, PermissionError):
    """The store refused an operation to a role (Redis answered NOPERM): names the role,
    what it tried and the group version it was refused."""

    def __init__(self, message: str, role: str | None = None, groups: list[str] | None = None) -> None:
        super().__init__(message)
        self.role = role
        self.groups = groups or []


class EncryptionKeyError(SkewlessError):
    """No usable encryption key for pii features: the key ring is missing or unreadable, or a
    file or value names a key id the ring lacks."""


class RequestError(SkewlessError):
    """A client request (features, entities, label frame) is malformed."""


class CheckFailedError(SkewlessError):
    """A blocking data-quality check failed: the partitions were not written anywhere."""


class MissingPartitionsError(SkewlessError):
    """Day partitions a read needs were never materialized: its values would be stale."""


class MissingPartitionsWarning(UserWarning):
    """Partitions a read needs are missing and the caller allowed it (`allow_missing=True`)."""
