"""Every SQL statement about users, MotorBlocks, vaultboxes, credentials, certificates and
messages. Protocol front ends call these functions; they never write SQL themselves.

Functions take an asyncpg connection or pool (`Executor`) so the caller chooses the database
role and the transaction.
"""

from encimap.store.errors import Conflict, LimitReached, NotFound, StoreError

__all__ = ["Conflict", "LimitReached", "NotFound", "StoreError"]
