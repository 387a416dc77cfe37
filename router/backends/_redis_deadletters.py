"""Dead letters in Redis (``dead_letters="redis://…"``): shared by every process.

Layout under the prefix: ``dl:rec`` (hash: id -> record JSON), ``dl:ids`` (sorted
set, all scores 0, so members sort by id, which sorts by time) and ``dl:counts``
(hash: reason -> count). Every change is one MULTI transaction.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..deadletters import (
    DeadLetterFilter,
    DeadLetterPage,
    DeadLetterRecord,
    check_page,
)
from ..ids import dead_letter_id_floor
from .base import BackendDown

__all__ = ["RedisDeadLetterStore"]

_ERRORS = (RedisError, OSError)
_EVERYTHING = DeadLetterFilter()
_SCAN = 500


class RedisDeadLetterStore:
    """A :class:`~router.deadletters.DeadLetterStore` on Redis."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "agent-router:",
        max_records: int | None = 100_000,
        max_age: float | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.max_records = max_records
        self.max_age = max_age
        self.retention_removed = 0
        self._redis: Any = None
        self._adds = 0
        self._rec = prefix + "dl:rec"
        self._ids = prefix + "dl:ids"
        self._counts = prefix + "dl:counts"

    @property
    def redis(self) -> Any:
        if self._redis is None:
            raise RuntimeError("the dead-letter store is not open")
        return self._redis

    async def open(self) -> None:
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(
                self.url,
                decode_responses=True,
                socket_timeout=5.0,
                socket_connect_timeout=2.0,
                retry=Retry(NoBackoff(), 0),
            )

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def add(self, record: DeadLetterRecord) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._rec, record.id, json.dumps(record.to_dict()))
                pipe.zadd(self._ids, {record.id: 0})
                pipe.hincrby(self._counts, record.reason, 1)
                await pipe.execute()
        except _ERRORS as exc:
            raise BackendDown(f"dead-letter store unreachable: {exc}") from exc
        self._adds += 1
        if self._adds % 100 == 1:
            try:
                await self._retain()
            except _ERRORS as exc:
                raise BackendDown(f"dead-letter retention failed: {exc}") from exc

    async def _retain(self) -> None:
        doomed: list[str] = []
        if self.max_age is not None:
            floor = dead_letter_id_floor(time.time() - self.max_age)
            doomed += await self.redis.zrangebylex(self._ids, "-", "(" + floor)
        if self.max_records is not None:
            excess = await self.redis.zcard(self._ids) - len(doomed) - self.max_records
            if excess > 0:
                doomed += await self.redis.zrange(self._ids, len(doomed), len(doomed) + excess - 1)
        for start in range(0, len(doomed), _SCAN):
            self.retention_removed += await self._remove(doomed[start : start + _SCAN])

    async def _remove(self, ids: list[str]) -> int:
        if not ids:
            return 0
        raw = await self.redis.hmget(self._rec, ids)
        removed = 0
        async with self.redis.pipeline(transaction=True) as pipe:
            for record_id, text in zip(ids, raw, strict=True):
                if text is None:
                    continue
                removed += 1
                pipe.hdel(self._rec, record_id)
                pipe.zrem(self._ids, record_id)
                pipe.hincrby(self._counts, json.loads(text)["reason"], -1)
            await pipe.execute()
        return removed

    async def get(self, record_id: str) -> DeadLetterRecord | None:
        try:
            text = await self.redis.hget(self._rec, record_id)
        except _ERRORS as exc:
            raise BackendDown(str(exc)) from exc
        return None if text is None else DeadLetterRecord.from_dict(json.loads(text))

    async def update(self, record: DeadLetterRecord) -> None:
        try:
            old = await self.redis.hget(self._rec, record.id)
            if old is None:
                return
            old_reason = json.loads(old)["reason"]
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._rec, record.id, json.dumps(record.to_dict()))
                if old_reason != record.reason:
                    pipe.hincrby(self._counts, old_reason, -1)
                    pipe.hincrby(self._counts, record.reason, 1)
                await pipe.execute()
        except _ERRORS as exc:
            raise BackendDown(str(exc)) from exc

    async def delete(self, record_id: str) -> bool:
        try:
            return await self._remove([record_id]) == 1
        except _ERRORS as exc:
            raise BackendDown(str(exc)) from exc

    async def _scan(
        self, where: DeadLetterFilter, cursor: str | None, want: int | None
    ) -> list[DeadLetterRecord]:
        """Matching records, newest first, below ``cursor``; at most ``want``."""
        upper = "+"
        if cursor is not None:
            upper = "(" + cursor
        if where.before is not None:
            floor = dead_letter_id_floor(where.before)
            if upper == "+" or floor < upper[1:]:
                upper = "(" + floor
        lower = "-" if where.since is None else "[" + dead_letter_id_floor(where.since)
        found: list[DeadLetterRecord] = []
        while want is None or len(found) < want:
            ids = await self.redis.zrevrangebylex(self._ids, upper, lower, start=0, num=_SCAN)
            if not ids:
                break
            for text in await self.redis.hmget(self._rec, ids):
                if text is None:
                    continue
                record = DeadLetterRecord.from_dict(json.loads(text))
                if where.matches(record):
                    found.append(record)
                    if want is not None and len(found) >= want:
                        break
            upper = "(" + ids[-1]
        return found

    async def list(
        self, where: DeadLetterFilter = _EVERYTHING, *, limit: int = 100, cursor: str | None = None
    ) -> DeadLetterPage:
        check_page(limit, cursor)
        try:
            items = await self._scan(where, cursor, limit + 1)
        except _ERRORS as exc:
            raise BackendDown(str(exc)) from exc
        if len(items) > limit:
            return DeadLetterPage(items[:limit], items[limit - 1].id)
        return DeadLetterPage(items, None)

    async def purge(self, where: DeadLetterFilter = _EVERYTHING) -> int:
        try:
            doomed = [record.id for record in await self._scan(where, None, None)]
            removed = 0
            for start in range(0, len(doomed), _SCAN):
                removed += await self._remove(doomed[start : start + _SCAN])
        except _ERRORS as exc:
            raise BackendDown(str(exc)) from exc
        return removed

    async def counts(self) -> dict[str, int]:
        try:
            raw: dict[str, Any] = await self.redis.hgetall(self._counts)
        except _ERRORS as exc:
            raise BackendDown(str(exc)) from exc
        return {reason: int(n) for reason, n in raw.items() if int(n) > 0}
