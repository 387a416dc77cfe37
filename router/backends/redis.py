"""The Redis backend (``redis://host:port/db``): many processes, one consistent router.

What lives in Redis (every key under a configurable prefix, default ``agent-router:``):

- ``threads``: a hash, thread id -> owner (HSETNX: one owner per thread, ever);
- ``seq``: a hash, thread id -> the thread's last seq (never reused);
- ``h:<thread>``: the thread's history, a stream capped at ``history_size`` whose
  entry ids are ``<seq>-1``, expiring ``history_ttl`` after the last append;
- ``r:<run>``: the run's lifecycle state, expiring after ``run_ttl`` (finished)
  or a day (unfinished);
- ``ut:<user>``: the threads a user had events in, scored by time (for healing);
- ``epoch``: a token written at start; when it disappears, Redis was restarted
  empty and history starts a new epoch.

One Lua script commits an event: it checks and advances the run's lifecycle,
assigns the seq, appends to history and publishes to the owner's channel
``u:<user>``, atomically, in one round trip. PUBLISH answers how many processes
listen for that user, which is how "nobody listening anywhere" is known.

Each process subscribes only to the channels of users it has connections for.
A dropped subscription is re-established and the gap healed from history; a
round-trip probe catches a subscription that looks alive but delivers nothing.
Only canonical ids reach key and channel names; there is no pattern subscription.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from .._tasks import Services
from ..connections import Hub
from ..history import HistorySlice
from ..ids import UserId, new_connection_id
from ._redis_commit import CommitPipe
from ._resp import reply_reader
from .base import BackendDown, Committed

__all__ = ["RedisBackend", "RedisDeadLetterStore", "RedisThreadStore"]

logger = logging.getLogger("router.redis")

_COMMIT = r"""
-- KEYS: <prefix>seq, <prefix>h:<thread>, <prefix>r:<run>, <prefix>ut:<user>
-- ARGV: thread, type, tool name, tool call id, frame head, frame tail
-- The backend's settings (history size, TTLs) are written into the script.
local run = KEYS[3]
local key_prefix = string.sub(KEYS[1], 1, -4)
local run_name = "'" .. string.sub(run, #key_prefix + 3) .. "'"
local etype = ARGV[2]
local state = redis.call('HMGET', run, 'f', 's')
local fin, started = state[1], state[2]
if fin then
  return {0, 'run ' .. run_name .. ' already ended with ' .. fin ..
    '; no ' .. etype .. ' may follow'}
end
if etype == 'agent_started' then
  if started then return {0, 'run ' .. run_name .. ' has already started'} end
  redis.call('HSET', run, 's', '1')
elseif not started then
  return {0, 'run ' .. run_name .. ' has not started: its first event must be agent_started'}
elseif etype == 'tool_executing' then
  local field = 't:' .. ARGV[3] .. '\0' .. ARGV[4]
  if ARGV[4] ~= '' and redis.call('HEXISTS', run, field) == 1 then
    return {0, 'tool call ' .. ARGV[4] .. ' of run ' .. run_name .. ' is already executing'}
  end
  redis.call('HINCRBY', run, field, 1)
elseif etype == 'tool_completed' then
  local field = nil
  if ARGV[4] ~= '' then
    field = 't:' .. ARGV[3] .. '\0' .. ARGV[4]
    if tonumber(redis.call('HGET', run, field) or '0') <= 0 then field = nil end
  else
    local prefix = 't:' .. ARGV[3] .. '\0'
    local all = redis.call('HGETALL', run)
    for i = 1, #all, 2 do
      if string.sub(all[i], 1, #prefix) == prefix and tonumber(all[i + 1]) > 0 then
        field = all[i]
        break
      end
    end
  end
  if not field then
    return {0, 'tool_completed for ' .. ARGV[3] ..
      ' without an open tool_executing in run ' .. run_name}
  end
  if redis.call('HINCRBY', run, field, -1) <= 0 then redis.call('HDEL', run, field) end
end
if etype == 'agent_completed' or etype == 'agent_error' then
  redis.call('HSET', run, 'f', etype)
  redis.call('EXPIRE', run, __RUN_TTL__)
else
  redis.call('EXPIRE', run, __UNFINISHED_RUN_TTL__)
end
local seq = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local frame = ARGV[5] .. seq .. ARGV[6]
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', __HISTORY_SIZE__, seq .. '-1', 'f', frame, 't', ms)
redis.call('EXPIRE', KEYS[2], __HISTORY_TTL__)
if redis.call('ZADD', KEYS[4], ms, ARGV[1]) == 1 then
  -- A thread new to the index: drop those quiet for longer than history lasts.
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ms - __HISTORY_TTL__ * 1000)
end
redis.call('EXPIRE', KEYS[4], __HISTORY_TTL__)
local channel = key_prefix .. 'u:' .. string.sub(KEYS[4], #key_prefix + 4)
local listeners = redis.call('PUBLISH', channel, seq .. ' ' .. ARGV[1] .. ' ' .. frame)
return {seq, listeners}
"""

_REDIS_ERRORS = (RedisError, OSError)
_TOOL_EVENTS = frozenset({"tool_executing", "tool_completed"})


def _client(url: str, *, max_connections: int = 64, **options: Any) -> Any:
    options.setdefault("socket_timeout", 5.0)
    options.setdefault("socket_connect_timeout", 2.0)
    # Outages are handled here (spool, resubscribe, heal), so no retrying through
    # them; but one retry on a connection error, at once: after Redis restarted, each
    # pooled connection fails its first command. Every command sent through these
    # clients is idempotent (commits go through the commit pipe, which never retries).
    options.setdefault("retry", Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
    options.setdefault("decode_responses", True)
    # Concurrent publishers wait for a free connection instead of failing.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=options["socket_timeout"] or 5.0, **options
    )
    return aioredis.Redis(connection_pool=pool)


class RedisThreadStore:
    """Thread ownership in a Redis hash: HSETNX makes the first claim win everywhere."""

    local = False

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend

    async def claim(self, thread_id: str, user_id: UserId) -> UserId:
        key = self._backend.key("threads")
        try:
            await self._backend.redis.hsetnx(key, thread_id, user_id)
            owner = await self._backend.redis.hget(key, thread_id)
        except _REDIS_ERRORS as exc:
            raise BackendDown(str(exc)) from exc
        return UserId(owner) if owner is not None else user_id

    async def owner(self, thread_id: str) -> UserId | None:
        try:
            owner = await self._backend.redis.hget(self._backend.key("threads"), thread_id)
        except _REDIS_ERRORS as exc:
            raise BackendDown(str(exc)) from exc
        return None if owner is None else UserId(owner)

    async def delete(self, thread_id: str) -> bool:
        try:
            removed = await self._backend.redis.hdel(self._backend.key("threads"), thread_id)
        except _REDIS_ERRORS as exc:
            raise BackendDown(str(exc)) from exc
        return bool(removed)


class RedisBackend:
    """Shared state and fan-out on Redis. See the module docstring for the layout."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "agent-router:",
        history_size: int = 1000,
        history_ttl: float = 900.0,
        run_ttl: float = 600.0,
        unfinished_run_ttl: float = 86400.0,
        probe_interval: float = 5.0,
        probe_timeout: float = 5.0,
        max_tracked_threads: int = 100_000,
        **client_options: Any,
    ) -> None:
        if not prefix or any(ch.isspace() or ch in "*?[]" for ch in prefix):
            raise ValueError(f"bad Redis key prefix {prefix!r}")
        self.url = url
        self.prefix = prefix
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.run_ttl = run_ttl
        self.unfinished_run_ttl = unfinished_run_ttl
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.max_tracked_threads = max_tracked_threads
        self._client_options = client_options
        # redis-py's annotations are looser than mypy --strict likes; the calls we
        # make are few and covered by tests against a real server.
        self.redis: Any = _client(url, **client_options)
        self._sub_redis: Any = _client(
            # RESP2: the subscription is read as plain replies (see _read). No retry:
            # the subscriber resubscribes itself, with the channels it needs now.
            url,
            **{
                **client_options,
                "protocol": 2,
                "socket_timeout": None,
                "retry": Retry(NoBackoff(), 0),
            },
        )
        self.threads = RedisThreadStore(self)
        self._commits = CommitPipe(self.redis, self._commit_script())
        self._hub: Hub | None = None
        self._services = Services()
        self._pubsub: Any = None
        self._watched: dict[str, int] = {}
        self._confirmed: dict[str, anyio.Event] = {}
        self._subscribe_lock = anyio.Lock()
        # Per user, the last seq this process received per thread (for gap healing).
        self._seen: dict[str, OrderedDict[str, int]] = {}
        self._process_token = new_connection_id()
        self._probe_channel = self.key("probe:" + self._process_token)
        self._probe_seen = anyio.Event()
        self._epoch: str | None = None
        self._lost_since: float | None = None
        self._reconnect = anyio.Event()
        #: called when Redis turns out to have lost its data (the router drops caches)
        self.on_epoch_change: Callable[[], None] | None = None
        # Health, for /stats and /metrics.
        self.connected = False
        self.subscribed = False
        self.resubscribes = 0
        self.healed = 0
        self.probe_failures = 0
        self.epoch_changes = 0

    def _commit_script(self) -> str:
        """The commit script with this backend's settings written in (fewer bytes
        per event than sending them as arguments each time)."""
        settings = {
            "__HISTORY_SIZE__": self.history_size,
            "__HISTORY_TTL__": max(1, int(self.history_ttl)),
            "__UNFINISHED_RUN_TTL__": max(1, int(self.unfinished_run_ttl)),
            "__RUN_TTL__": max(1, int(self.run_ttl)),
        }
        script = _COMMIT
        for name, value in settings.items():
            script = script.replace(name, str(int(value)))
        return script

    def key(self, name: str) -> str:
        return self.prefix + name

    # ------------------------------------------------------------------ lifetime

    async def start(self, hub: Hub) -> None:
        self._hub = hub
        try:
            await self._check_epoch()
            self.connected = True
        except _REDIS_ERRORS as exc:
            # Start anyway: publishes spool until Redis answers.
            logger.warning("redis unreachable at start (%s); events will be spooled", exc)
            self._lost_since = time.time()
        self._commits.open()
        self._services.spawn(self._commits.run, name="redis-commits")
        self._services.spawn(self._subscriber, name="redis-subscriber")
        self._services.spawn(self._prober, name="redis-prober")

    async def stop(self) -> None:
        await self._services.close()
        self._hub = None
        await self.redis.aclose(close_connection_pool=True)
        await self._sub_redis.aclose(close_connection_pool=True)

    async def ping(self) -> bool:
        try:
            await self._check_epoch()
        except _REDIS_ERRORS:
            self.connected = False
            return False
        self.connected = True
        return True

    async def _drop_idle_connections(self) -> None:
        """Close the pool's idle connections: after Redis went away they are all
        stale, and each would otherwise fail one command before reconnecting."""
        with contextlib.suppress(Exception):
            await self.redis.connection_pool.disconnect(inuse_connections=False)

    async def _check_epoch(self) -> None:
        """Read the epoch token (writing one if there is none); a different token
        than before means Redis lost its data. (A stale pooled connection after a
        restart is retried by the client itself.)"""
        key = self.key("epoch")
        current = await self.redis.get(key)
        if current is None:
            await self.redis.set(key, new_connection_id(), nx=True)
            current = await self.redis.get(key)
        if self._epoch is not None and current != self._epoch:
            self.epoch_changes += 1
            logger.warning("redis lost its data (new history epoch %s)", current)
            for seen in self._seen.values():
                seen.clear()
            if self.on_epoch_change is not None:
                self.on_epoch_change()
        self._epoch = current

    # ------------------------------------------------------------------ hot path

    async def commit(
        self,
        *,
        thread_id: str,
        user_id: str,
        run_id: str,
        event_type: str,
        payload: Any,
        head: str,
        tail: str,
    ) -> Committed | str:
        tool_name = call_id = ""
        if event_type in _TOOL_EVENTS:
            # Only tool payloads have these (a missing attribute on a pydantic
            # model is a slow AttributeError).
            tool_name = payload.tool_name
            call_id = payload.tool_call_id or ""
        try:
            answer = await self._commits.call(
                keys=[
                    self.key("seq"),
                    self.key("h:" + thread_id),
                    self.key("r:" + run_id),
                    self.key("ut:" + user_id),
                ],
                args=[
                    thread_id,
                    event_type,
                    tool_name,
                    call_id,
                    head,
                    tail,
                ],
            )
        except _REDIS_ERRORS as exc:
            self.connected = False
            raise BackendDown(str(exc)) from exc
        self.connected = True
        seq = int(answer[0])
        if seq == 0:
            return str(answer[1])
        # Delivery to this process's connections happens when the message comes
        # back through the subscription, in seq order with everyone else's.
        return Committed(seq, 0, int(answer[1]) > 0)

    # ------------------------------------------------------------------ history

    async def read_history(self, thread_id: str, after_seq: int) -> HistorySlice:
        try:
            last = await self.redis.hget(self.key("seq"), thread_id)
            entries = await self.redis.xrange(self.key("h:" + thread_id), min=f"{after_seq + 1}-0")
        except _REDIS_ERRORS as exc:
            raise BackendDown(str(exc)) from exc
        floor = (time.time() - self.history_ttl) * 1000
        frames = [
            (int(entry_id.partition("-")[0]), fields["f"])
            for entry_id, fields in entries
            if float(fields.get("t", 0)) >= floor
        ]
        last_seq = int(last or 0)
        return HistorySlice(last_seq, frames[0][0] if frames else None, frames)

    async def last_seq(self, thread_id: str) -> int:
        try:
            last = await self.redis.hget(self.key("seq"), thread_id)
        except _REDIS_ERRORS as exc:
            raise BackendDown(str(exc)) from exc
        return int(last or 0)

    async def find_event(self, thread_id: str, event_id: str) -> int | None:
        history = await self.read_history(thread_id, 0)
        needle = f'"event_id":"{event_id}"'
        for seq, frame in history.frames:
            if needle in frame:
                return seq
        return None

    # ------------------------------------------------------------------ subscriptions

    async def watch(self, user_id: str) -> None:
        """Make sure this process receives the user's events before returning."""
        self._watched[user_id] = self._watched.get(user_id, 0) + 1
        if self._watched[user_id] > 1:
            event = self._confirmed.get(user_id)
            if event is not None:
                with anyio.move_on_after(self.probe_timeout):
                    await event.wait()
            return
        self._seen[user_id] = OrderedDict()
        confirmed = self._confirmed[user_id] = anyio.Event()
        try:
            async with self._subscribe_lock:
                if self._pubsub is None:
                    # Not subscribed right now: the subscriber includes this user
                    # when it (re)subscribes, and heals from history.
                    return
                await self._pubsub.subscribe(self.key("u:" + user_id))
        except _REDIS_ERRORS:
            self._reconnect.set()
            return
        with anyio.move_on_after(self.probe_timeout):
            await confirmed.wait()

    def unwatch(self, user_id: str) -> None:
        count = self._watched.get(user_id, 0) - 1
        if count > 0:
            self._watched[user_id] = count
            return
        self._watched.pop(user_id, None)
        self._seen.pop(user_id, None)
        self._confirmed.pop(user_id, None)
        self._services.spawn(self._unsubscribe, user_id, name="redis-unsubscribe")

    async def _unsubscribe(self, user_id: str) -> None:
        if user_id in self._watched or self._pubsub is None:
            return
        with contextlib.suppress(*_REDIS_ERRORS):
            async with self._subscribe_lock:
                if user_id not in self._watched:
                    await self._pubsub.unsubscribe(self.key("u:" + user_id))

    async def _subscriber(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self._sub_redis.pubsub()
            try:
                self._reconnect = anyio.Event()
                async with self._subscribe_lock:
                    channels = [self._probe_channel] + [self.key("u:" + u) for u in self._watched]
                    await pubsub.subscribe(*channels)
                    self._pubsub = pubsub
                    self.subscribed = True
                await self._read_until_reconnect(pubsub)
                backoff = 0.1
            except _REDIS_ERRORS as exc:
                if self.subscribed or self._lost_since is None:
                    logger.warning("redis subscription lost: %s", exc)
                backoff = min(backoff * 2, 2.0)
            except Exception:
                # A bug must not end fan-out for good: log it and resubscribe.
                logger.exception("redis subscriber failed; resubscribing")
                backoff = min(backoff * 2, 2.0)
            finally:
                self.subscribed = False
                self._pubsub = None
                if self._lost_since is None:
                    self._lost_since = time.time()
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await pubsub.aclose()
            self.resubscribes += 1
            await anyio.sleep(backoff)

    async def _read_until_reconnect(self, pubsub: Any) -> None:
        """Read the subscription until it fails (raises) or the probe asks for a
        reconnect (returns)."""
        failure: BaseException | None = None

        async def read(scope: anyio.CancelScope) -> None:
            nonlocal failure
            try:
                await self._read(pubsub)
            except _REDIS_ERRORS as exc:
                failure = exc
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read, tg.cancel_scope)
            await self._reconnect.wait()
            logger.warning("redis subscription probe failed; resubscribing")
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _read(self, pubsub: Any) -> None:
        probe = self._probe_channel
        prefix_len = len(self.key("u:"))
        # Replies straight off the subscription's connection (RESP2: [kind, channel,
        # data]): PubSub.get_message wraps each in a retry, a dict and handlers this
        # reader does not need, on the path of every event.
        # Every message that one read of the socket brought is handled before the
        # next read, and an in-order message without awaiting anything.
        replies = reply_reader(pubsub.connection)
        read_one = pubsub.connection.read_response
        deliver_now = self._deliver_now
        while True:
            batch = [await read_one(timeout=None)] if replies is None else await replies.replies()
            for reply in batch:
                if not isinstance(reply, list) or len(reply) != 3:
                    continue
                kind, channel, data = reply
                if kind == "message":
                    if channel == probe:
                        self._probe_seen.set()
                    else:
                        user_id = channel[prefix_len:]
                        pending = deliver_now(user_id, data)
                        if pending is not None:
                            await self._on_message(user_id, *pending)
                elif kind == "subscribe":
                    if channel == probe:
                        await self._resubscribed()
                    else:
                        event = self._confirmed.get(channel[prefix_len:])
                        if event is not None:
                            event.set()
                elif kind == "unsubscribe" and channel in pubsub.pending_unsubscribe_channels:
                    # What PubSub's own reader would do: forget the channel (it
                    # would otherwise keep every user ever unwatched), unless it
                    # was subscribed again meanwhile (subscribe clears the pending).
                    pubsub.pending_unsubscribe_channels.discard(channel)
                    pubsub.channels.pop(channel, None)

    def _deliver_now(self, user_id: str, data: str) -> tuple[str, int, str] | None:
        """Handle a message that needs nothing awaited: the next seq of its thread
        (delivered), a repeat (dropped), or one for a user no longer watched (None).
        Otherwise (a gap to heal, or a seq that went backwards) the message, read, for
        :meth:`_on_message`."""
        seen = self._seen.get(user_id)
        if seen is None:
            return None
        seq_text, _, rest = data.partition(" ")
        thread_id, _, frame = rest.partition(" ")
        seq = int(seq_text)
        last = seen.get(thread_id)
        if last is None or seq == last + 1:
            self._remember(seen, thread_id, seq)
            if self._hub is not None:
                self._hub.deliver(user_id, thread_id, seq, frame)
            return None
        return None if seq == last else (thread_id, seq, frame)

    async def _resubscribed(self) -> None:
        """The subscription is (back) up: check the epoch and heal what was missed."""
        if self._lost_since is not None:
            await self._drop_idle_connections()
        with contextlib.suppress(*_REDIS_ERRORS):
            await self._check_epoch()
        self.connected = True
        lost_since, self._lost_since = self._lost_since, None
        for event in self._confirmed.values():
            event.set()
        if lost_since is not None and self._watched:
            await self._heal_all(lost_since)

    async def _on_message(self, user_id: str, thread_id: str, seq: int, frame: str) -> None:
        """A message out of its thread's order (see :meth:`_deliver_now`)."""
        seen = self._seen.get(user_id)
        if seen is None:
            return
        last = seen.get(thread_id)
        if last is not None and seq < last:
            # A thread's seq went backwards: Redis restarted empty? Check now, so the
            # new sequence is not taken for duplicates.
            with contextlib.suppress(*_REDIS_ERRORS):
                await self._check_epoch()
            last = seen.get(thread_id)
        if last is not None and seq > last + 1:
            await self._heal(user_id, thread_id, last, seq - 1)
        if last is None or seq > last:
            self._remember(seen, thread_id, seq)
            if self._hub is not None:
                self._hub.deliver(user_id, thread_id, seq, frame)

    def _remember(self, seen: OrderedDict[str, int], thread_id: str, seq: int) -> None:
        seen[thread_id] = seq
        seen.move_to_end(thread_id)
        if len(seen) > self.max_tracked_threads:
            seen.popitem(last=False)

    async def _heal(self, user_id: str, thread_id: str, after: int, upto: int | None) -> None:
        """Deliver what the subscription missed, from history."""
        history = await self.read_history(thread_id, after)
        seen = self._seen.get(user_id)
        if seen is None or self._hub is None:
            return
        for seq, frame in history.frames:
            if upto is not None and seq > upto:
                break
            if seq > seen.get(thread_id, 0):
                self._remember(seen, thread_id, seq)
                self._hub.deliver(user_id, thread_id, seq, frame)
                self.healed += 1

    async def _heal_all(self, lost_since: float) -> None:
        since_ms = (lost_since - 2.0) * 1000
        for user_id in list(self._watched):
            threads = await self.redis.zrangebyscore(self.key("ut:" + user_id), since_ms, "+inf")
            seen = self._seen.get(user_id)
            if seen is None:
                continue
            for thread_id in threads:
                after = seen.get(thread_id)
                if after is None:
                    after = await self._first_since(thread_id, since_ms)
                await self._heal(user_id, thread_id, after, None)

    async def _first_since(self, thread_id: str, since_ms: float) -> int:
        """The seq just before the first entry written at or after ``since_ms``."""
        entries = await self.redis.xrange(self.key("h:" + thread_id))
        for entry_id, fields in entries:
            if float(fields.get("t", 0)) >= since_ms:
                return int(entry_id.partition("-")[0]) - 1
        return int(await self.redis.hget(self.key("seq"), thread_id) or 0)

    async def _prober(self) -> None:
        """Round-trip probe: publish to our own channel and expect it back."""
        while True:
            await anyio.sleep(self.probe_interval)
            if not self.subscribed:
                await self.ping()
                continue
            self._probe_seen = anyio.Event()
            try:
                await self.redis.publish(self._probe_channel, "probe")
            except _REDIS_ERRORS:
                self.connected = False
                continue
            with anyio.move_on_after(self.probe_timeout) as scope:
                await self._probe_seen.wait()
            if scope.cancelled_caught:
                self.probe_failures += 1
                self._reconnect.set()
                continue
            # Redis may have restarted empty without our subscription noticing.
            with contextlib.suppress(*_REDIS_ERRORS):
                await self._check_epoch()

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "prefix": self.prefix,
            "connected": self.connected,
            "subscribed": self.subscribed,
            "watched_users": len(self._watched),
            "resubscribes": self.resubscribes,
            "healed": self.healed,
            "probe_failures": self.probe_failures,
            "epoch": self._epoch,
            "epoch_changes": self.epoch_changes,
        }


from ._redis_deadletters import RedisDeadLetterStore  # noqa: E402
