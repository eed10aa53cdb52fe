"""Errors raised by the stores. All are ValueError subclasses so callers that only expect bad input still catch them."""


class StoreError(ValueError):
    """Base class: something about a store's input or contents is wrong. The message names the file or record."""


class SchemaMismatchError(StoreError):
    """A Parquet file belongs to another table or another schema version than the reader expects."""


class CorruptFileError(StoreError):
    """A file in the store cannot be read (truncated, not Parquet, ...)."""


class PathEscapeError(StoreError):
    """A key or relative path would resolve outside the store root."""


class BadRecordError(StoreError):
    """One input record (a mask row, a COCO annotation, ...) is invalid; the message names it."""


class UnknownProtocolError(StoreError):
    """A URL names an fsspec protocol that fsspec does not know (a typo such as ``fiel://``)."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store at a URL that a reader was asked to open: the folder is missing or holds none of the tables.

    Also a FileNotFoundError, so callers that treat a missing store as a missing file still catch it."""
