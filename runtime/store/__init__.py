"""Durable storage: an LMDB write-ahead log with group commit, checkpoints and recovery.

The store knows nothing about agents; it stores streams of records and
checkpoints. `kvstate` builds key-value state on top of a stream.
"""

from runtime.store.errors import (
    CorruptCheckpointError,
    DataDirLockedError,
    DiskError,
    StoreClosedError,
    StoreError,
    StoreFullError,
)
from runtime.store.kvstate import KeyValueState, StateBook, StateError
from runtime.store.store import Store, StoreOptions, open_store

__all__ = [
    "CorruptCheckpointError",
    "DataDirLockedError",
    "DiskError",
    "KeyValueState",
    "StateBook",
    "StateError",
    "Store",
    "StoreClosedError",
    "StoreError",
    "StoreFullError",
    "StoreOptions",
    "open_store",
]
