"""Releases: agents' code, stored content-addressed and verified before every start."""

from runtime.releases.store import ReleaseError, ReleaseStore, tree_digest, verify

__all__ = ["ReleaseError", "ReleaseStore", "tree_digest", "verify"]
