"""The admission port in memory: the same budgets as infra/admission.py, for
unit tests of the edge and the services (tests/integration/test_admission_contract.py
holds both to one contract)."""

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

from services.ports import Admitted, RateLimit, TokenStore


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class FakeAdmission:
    tokens: TokenStore
    clock: Callable[[], float] = time.monotonic
    buckets: dict[UUID, _Bucket] = field(default_factory=dict)
    windows: dict[UUID, deque[float]] = field(default_factory=dict)

    async def admit(self, token_hash: bytes, limit: RateLimit) -> Admitted:
        view = await self.tokens.find(token_hash)
        if view is None:
            return Admitted(None)
        now = self.clock()
        bucket = self.buckets.get(view.token_id)
        if bucket is None:
            self.buckets[view.token_id] = _Bucket(limit.burst - 1.0, now)
            return Admitted(view)
        level = min(
            float(limit.burst),
            bucket.tokens + max(0.0, now - bucket.at) * limit.rate_per_second,
        )
        bucket.at = max(bucket.at, now)
        if level >= 1:
            bucket.tokens = level - 1
            return Admitted(view)
        bucket.tokens = level
        return Admitted(view, (1 - level) / limit.rate_per_second)

    async def miss(self, token_id: UUID, limit: int, window_seconds: float) -> int | None:
        now = self.clock()
        window = self.windows.setdefault(token_id, deque())
        while window and window[0] < now - window_seconds:
            window.popleft()
        window.append(now)
        if len(window) >= limit:
            count = len(window)
            window.clear()
            return count
        return None
