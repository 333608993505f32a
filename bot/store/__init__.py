"""SQLite state: the Store (database.py) with its migrations, the audit log's hash chain, and the disk's refusals."""

from .chain import ChainBreak, iso, utcnow
from .database import Store, read_only, unwritable_reason
from .disk import StoreUnwritable

__all__ = ["ChainBreak", "Store", "StoreUnwritable", "iso", "read_only", "unwritable_reason", "utcnow"]
