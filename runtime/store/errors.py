"""The store's errors. Each message says what went wrong and what to do about it."""


class StoreError(Exception):
    """A store operation failed; nothing it was given was acknowledged."""


class StoreFullError(StoreError):
    """The map reached its configured cap: raise [store] map_size_max or prune."""


class DiskError(StoreError):
    """The filesystem refused a write (full disk, file size limit, I/O error)."""


class StoreClosedError(StoreError):
    """The store was closed (shutdown) before the operation could be committed."""


class CorruptCheckpointError(StoreError):
    """A checkpoint failed its checksum or could not be decoded."""


class DataDirLockedError(StoreError):
    """Another process (a runtime or a maintenance run) holds the data directory."""
