"""Which database failures mean "unreachable, retry later" rather than a bug.

The one classification: the HTTP layer answers these 503 with Retry-After,
and the projection runners and NATS-fed workers retry them with backoff;
anything else is a bug and stops a projection (or answers 500).
"""

import asyncio

import asyncpg

from services.ports import Unavailable

_UNAVAILABLE = (
    Unavailable,
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08: the connection broke
    asyncpg.OperatorInterventionError,  # class 57: shutdown, starting up, terminated
    asyncpg.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.InterfaceError,  # the pool or connection is closed
    asyncpg.InternalClientError,  # a connection killed mid-protocol ("cannot switch to state")
    asyncpg.InvalidCatalogNameError,  # our database is gone (dropped, not restored yet)
    asyncpg.TransactionRollbackError,  # class 40: serialisation failure, deadlock
    asyncpg.LockNotAvailableError,  # 55P03: lock timeout
)


def database_unavailable(error: BaseException) -> bool:
    if isinstance(error, _UNAVAILABLE):
        return True
    # 55000 is raised on connect when a database refuses new connections.
    return isinstance(
        error, asyncpg.ObjectNotInPrerequisiteStateError
    ) and "accepting connections" in str(error)
