"""Dead letters in Redis (``dead_letters="redis://…"``): shared by every process.

Layout under the prefix: ``dl:rec`` (hash: id -> record JSON), ``dl:ids`` (sorted
set, all scores 0, so members sort by id, which sorts by time) and ``dl:counts``
(hash: reason -> count). Every change is one Lua script, so concurrent writers in
any number of processes keep the three in agreement; an add applies retention in
the same script, oldest first.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
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

# KEYS: rec, ids, counts. Removes each id in ARGV that exists; returns how many.
_REMOVE_BODY = r"""
local function remove(id)
  local text = redis.call('HGET', KEYS[1], id)
  if not text then return 0 end
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HINCRBY', KEYS[3], cjson.decode(text)['reason'], -1)
  return 1
end
"""

_REMOVE = _REMOVE_BODY + r"""
local removed = 0
for i = 1, #ARGV do removed = removed + remove(ARGV[i]) end
return removed
"""

# ARGV: id, record JSON, reason, max_records ('' for none), age floor id ('' for none).
# Adds (or replaces) the record, then drops what retention says, oldest first;
# returns how many retention dropped.
_ADD = _REMOVE_BODY + r"""
local id = ARGV[1]
local old = redis.call('HGET', KEYS[1], id)
if old then redis.call('HINCRBY', KEYS[3], cjson.decode(old)['reason'], -1) end
redis.call('HSET', KEYS[1], id, ARGV[2])
redis.call('ZADD', KEYS[2], 0, id)
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
local dropped = 0
if ARGV[5] ~= '' then
  local stale = redis.call('ZRANGEBYLEX', KEYS[2], '-', '(' .. ARGV[5])
  for i = 1, #stale do dropped = dropped + remove(stale[i]) end
end
if ARGV[4] ~= '' then
  local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
  if excess > 0 then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, excess - 1)
    for i = 1, #oldest do dropped = dropped + remove(oldest[i]) end
  end
end
return dropped
"""

# ARGV: id, record JSON, reason. Replaces an existing record (a no-op when it is gone).
_UPDATE = r"""
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local was = cjson.decode(old)['reason']
if was ~= ARGV[3] then
  redis.call('HINCRBY', KEYS[3], was, -1)
  redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
end
return 1
"""


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
        self._rec = prefix + "dl:rec"
        self._ids = prefix + "dl:ids"
        self._counts = prefix + "dl:counts"
        self._keys = [self._rec, self._ids, self._counts]
        self._add: Any = None
        self._remove_script: Any = None
        self._update: Any = None

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
                # One retry on a connection error (a stale pooled connection after
                # Redis restarted); every script here is idempotent.
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )
            self._add = self._redis.register_script(_ADD)
            self._remove_script = self._redis.register_script(_REMOVE)
            self._update = self._redis.register_script(_UPDATE)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def add(self, record: DeadLetterRecord) -> None:
        max_age_floor = ""
        if self.max_age is not None:
            max_age_floor = dead_letter_id_floor(time.time() - self.max_age)
        max_records = "" if self.max_records is None else str(max(0, self.max_records))
        try:
            dropped = await self._add(
                keys=self._keys,
                args=[
                    record.id,
                    json.dumps(record.to_dict()),
                    record.reason,
                    max_records,
                    max_age_floor,
                ],
            )
        except _ERRORS as exc:
            raise BackendDown(f"dead-letter store unreachable: {exc}") from exc
        self.retention_removed += int(dropped)

    async def _remove(self, ids: list[str]) -> int:
        if not ids:
            return 0
        return int(await self._remove_script(keys=self._keys, args=ids))

    async def get(self, record_id: str) -> DeadLetterRecord | None:
        try:
            text = await self.redis.hget(self._rec, record_id)
        except _ERRORS as exc:
            raise BackendDown(str(exc)) from exc
        return None if text is None else DeadLetterRecord.from_dict(json.loads(text))

    async def update(self, record: DeadLetterRecord) -> None:
        try:
            await self._update(
                keys=self._keys,
                args=[record.id, json.dumps(record.to_dict()), record.reason],
            )
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
