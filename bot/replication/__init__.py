"""The store beyond one disk: Litestream (restore at start, replicate while running) and the single-writer lease."""

from .litestream import Replica, ReplicaError, Replicator, litestream_binary
from .standby import wait_for_lease

__all__ = ["Replica", "ReplicaError", "Replicator", "litestream_binary", "wait_for_lease"]
