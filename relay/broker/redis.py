"""The Redis broker: records, streams and pub/sub shared by many relay instances.

Keys of one job share the hash tag `{job_id}` so they live on one Redis Cluster shard:
`relay:{id}:job` (hash: the record), `relay:{id}:events` (stream: the history, entry
id `0-(seq+1)`), `relay:{id}:ids` (set: event ids seen, for idempotent ingest). Events
are published on the channel `relay:{id}:channel`. One Lua script sequences, stores and
publishes, so no subscriber receives an event that history lacks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay.broker.base import Broker, PublishResult, Subscription
from relay.broker.states import STATE_AFTER, TERMINAL_STATES
from relay.errors import BrokerUnavailable, JobFinished
from relay.events import Event, NewEvent

logger = logging.getLogger(__name__)

CONTROL_CHANNEL = "relay:control"
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def _lua_state_table() -> str:
    rows = []
    for event_type, (state, sources) in STATE_AFTER.items():
        allowed = ", ".join(f'["{source.value}"]=true' for source in sorted(sources))
        rows.append(f'["{event_type}"]={{"{state.value}", {{{allowed}}}}}')
    return "{" + ", ".join(rows) + "}"


_PUBLISH_LUA = """
local transitions = @TRANSITIONS@
local terminal = {@TERMINAL@}
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {-1} end
if terminal[state] then return {-2} end
local seq = tonumber(redis.call('HGET', KEYS[1], 'next_seq'))
local accepted, duplicates, rejected = 0, 0, 0
local exit_status = nil
local started_at = nil
local i = 7
while i <= #ARGV do
  local event_id, event_type, body, kind, payload =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  if terminal[state] then
    rejected = rejected + 1
  elseif event_id ~= '' and redis.call('SADD', KEYS[3], event_id) == 0 then
    duplicates = duplicates + 1
  else
    local frame = '{"job":"' .. ARGV[1] .. '","seq":' .. seq .. ',' .. string.sub(body, 2)
    if kind == 'b' then
      local n = #frame
      frame = string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
        math.floor(n / 256) % 256, n % 256) .. frame .. payload
    end
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '0-' .. (seq + 1),
      'k', kind, 't', event_type, 'f', frame)
    redis.call('PUBLISH', ARGV[2], seq .. ' ' .. event_type .. ' ' .. kind .. '\\n' .. frame)
    local change = transitions[event_type]
    if change and change[2][state] then state = change[1] end
    if event_type == 'started' then started_at = ARGV[4] end
    if event_type == 'fatal' then
      local ok, decoded = pcall(cjson.decode, body)
      if ok and type(decoded.data) == 'table' and type(decoded.data.exit_status) == 'number' then
        exit_status = decoded.data.exit_status
      end
    end
    seq = seq + 1
    accepted = accepted + 1
  end
end
if accepted > 0 then
  redis.call('HSET', KEYS[1], 'next_seq', seq, 'state', state, 'last_event_at', ARGV[4])
  if exit_status then redis.call('HSET', KEYS[1], 'exit_status', exit_status) end
  if started_at then redis.call('HSETNX', KEYS[1], 'started_at', started_at) end
  -- Every key of the job expires together: after retention once finished, else after
  -- the lifetime of an unfinished job.
  local ttl = ARGV[6]
  if terminal[state] then
    redis.call('HSET', KEYS[1], 'finished', ARGV[4])
    ttl = ARGV[5]
  end
  for k = 1, 3 do redis.call('EXPIRE', KEYS[k], ttl) end
end
return {accepted, duplicates, seq - 1, rejected}
"""
PUBLISH_SCRIPT = _PUBLISH_LUA.replace("@TRANSITIONS@", _lua_state_table()).replace(
    "@TERMINAL@", ", ".join(f'["{state.value}"]=true' for state in sorted(TERMINAL_STATES))
)


def job_keys(job_id: str) -> tuple[str, str, str]:
    return (f"relay:{{{job_id}}}:job", f"relay:{{{job_id}}}:events", f"relay:{{{job_id}}}:ids")


def job_channel(job_id: str) -> str:
    return f"relay:{{{job_id}}}:channel"


class RedisBroker(Broker):
    """Broker for one or many relay instances sharing a Redis server."""

    def __init__(
        self,
        url: str,
        *,
        history_length: int = 10_000,
        retention_seconds: int = 86_400,
        job_ttl_seconds: int = 7 * 86_400,
        max_connections: int = 100,
    ) -> None:
        self._url = url
        self._history_length = history_length
        self._retention_seconds = retention_seconds
        self._job_ttl_seconds = job_ttl_seconds
        # A blocking pool makes a burst of requests wait for a connection, where the
        # default pool raises "Too many connections" at its limit.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=10,
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=15,
        )
        self._redis: Any = aioredis.Redis(connection_pool=pool)
        self._script = self._redis.register_script(PUBLISH_SCRIPT)
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._channels: dict[str, set[Subscription]] = {}
        self._confirmations: dict[str, asyncio.Event] = {}
        self._subscribe_lock = asyncio.Lock()
        self._subscriber_connected = False

    # Lifecycle

    async def start(self) -> None:
        await self.ping()
        await self._open_pubsub()
        self._subscriber_connected = True
        self._reader = asyncio.create_task(self._read_messages(), name="redis-subscriber")
        logger.info("redis broker started on %s", _redacted(self._url))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
        if self._pubsub is not None:
            await self._pubsub.aclose()
        await self._redis.aclose()
        logger.info("redis broker stopped")

    async def ping(self) -> None:
        if self._reader is not None and not self._subscriber_connected:
            raise BrokerUnavailable("redis subscriber is reconnecting")
        try:
            await self._redis.ping()
        except _UNAVAILABLE as error:
            raise BrokerUnavailable(
                f"redis at {_redacted(self._url)} is unavailable: {error}"
            ) from error

    # Records

    async def create_job(self, job_id: str, record: dict[str, str]) -> None:
        key = job_keys(job_id)[0]
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping={**record, "next_seq": "0"})
                pipe.expire(key, self._job_ttl_seconds)
                await pipe.execute()
        except _UNAVAILABLE as error:
            raise BrokerUnavailable(str(error)) from error

    async def get_job(self, job_id: str) -> dict[str, str] | None:
        try:
            raw = await self._redis.hgetall(job_keys(job_id)[0])
        except _UNAVAILABLE as error:
            raise BrokerUnavailable(str(error)) from error
        if not raw:
            return None
        return {key.decode(): value.decode() for key, value in raw.items()}

    async def update_job(self, job_id: str, fields: dict[str, str]) -> None:
        try:
            await self._redis.hset(job_keys(job_id)[0], mapping=fields)
        except _UNAVAILABLE as error:
            raise BrokerUnavailable(str(error)) from error

    # Events

    async def publish(self, job_id: str, events: Sequence[NewEvent]) -> PublishResult:
        args: list[str | bytes | int | float] = [
            job_id,
            job_channel(job_id),
            self._history_length,
            f"{time.time():.6f}",
            self._retention_seconds,
            self._job_ttl_seconds,
        ]
        for event in events:
            args += [
                "" if event.event_id is None else str(event.event_id),
                event.type,
                event.body,
                "t" if event.payload is None else "b",
                event.payload or b"",
            ]
        try:
            reply = await self._script(keys=job_keys(job_id), args=args)
        except _UNAVAILABLE as error:
            raise BrokerUnavailable(str(error)) from error

        if reply[0] == -1:
            raise KeyError(job_id)
        if reply[0] == -2:
            raise JobFinished(job_id)
        accepted, duplicates, last_seq, rejected = (int(value) for value in reply)
        return PublishResult(accepted, duplicates, last_seq, rejected)

    async def history(self, job_id: str, after: int = -1) -> list[Event]:
        try:
            entries = await self._redis.xrange(job_keys(job_id)[1], min=f"0-{after + 2}")
        except _UNAVAILABLE as error:
            raise BrokerUnavailable(str(error)) from error
        events = []
        for entry_id, fields in entries:
            seq = int(entry_id.split(b"-")[1]) - 1
            frame: str | bytes = fields[b"f"]
            if fields[b"k"] == b"t":
                frame = fields[b"f"].decode()
            events.append(Event(seq=seq, type=fields[b"t"].decode(), frame=frame))
        return events

    # Jobs the watchdog checks

    async def add_active(self, cluster: str, job_id: str, scheduler_id: str) -> None:
        await self._call(self._redis.hset, f"relay:active:{cluster}", job_id, scheduler_id)

    async def remove_active(self, cluster: str, job_id: str) -> None:
        await self._call(self._redis.hdel, f"relay:active:{cluster}", job_id)

    async def active_jobs(self, cluster: str) -> dict[str, str]:
        raw = await self._call(self._redis.hgetall, f"relay:active:{cluster}")
        return {key.decode(): value.decode() for key, value in raw.items()}

    async def count_watchers(self, job_id: str, change: int) -> int:
        key = f"relay:{{{job_id}}}:watchers"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incrby(key, change)
            pipe.expire(key, self._job_ttl_seconds)
            try:
                count, _ = await pipe.execute()
            except _UNAVAILABLE as error:
                raise BrokerUnavailable(str(error)) from error
        return max(int(count), 0)

    async def claim_poll(self, cluster: str, seconds: float) -> bool:
        claimed = await self._call(
            self._redis.set, f"relay:watchdog:{cluster}", "1", nx=True, px=int(seconds * 1000)
        )
        return bool(claimed)

    async def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except _UNAVAILABLE as error:
            raise BrokerUnavailable(str(error)) from error

    # Subscriptions

    async def _add_subscriber(self, subscription: Subscription) -> None:
        channel = job_channel(subscription.job_id)
        async with self._subscribe_lock:
            if not self._subscriber_connected:
                raise BrokerUnavailable("redis subscriber is reconnecting")
            self._channels.setdefault(channel, set()).add(subscription)
            confirmed = self._confirmations.get(channel)
            if confirmed is None:
                confirmed = self._confirmations[channel] = asyncio.Event()
                try:
                    await self._pubsub.subscribe(channel)
                except (*_UNAVAILABLE, RedisError, RuntimeError) as error:
                    self._discard(channel, subscription)
                    raise BrokerUnavailable(f"subscribe to {channel} failed: {error!r}") from error
        # Events published before Redis confirms the subscription would not reach this
        # process, so the caller waits for the confirmation before it submits.
        try:
            await asyncio.wait_for(confirmed.wait(), timeout=10)
        except TimeoutError as error:
            async with self._subscribe_lock:
                self._discard(channel, subscription)
            raise BrokerUnavailable(f"subscribe to {channel} not confirmed in 10s") from error

    def _discard(self, channel: str, subscription: Subscription) -> None:
        subscribers = self._channels.get(channel, set())
        subscribers.discard(subscription)
        if not subscribers:
            self._channels.pop(channel, None)
            self._confirmations.pop(channel, None)

    async def _remove_subscriber(self, subscription: Subscription) -> None:
        channel = job_channel(subscription.job_id)
        async with self._subscribe_lock:
            subscribers = self._channels.get(channel)
            if subscribers is None:
                return
            subscribers.discard(subscription)
            if subscribers:
                return
            del self._channels[channel]
            self._confirmations.pop(channel, None)
            try:
                await self._pubsub.unsubscribe(channel)
            except (*_UNAVAILABLE, RedisError) as error:
                logger.warning("unsubscribe from %s failed: %r", channel, error)

    async def _open_pubsub(self) -> None:
        self._pubsub = self._redis.pubsub()
        # A standing subscription keeps the connection open while no job is watched.
        await self._pubsub.subscribe(CONTROL_CHANNEL, *self._channels)

    async def _read_messages(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except (*_UNAVAILABLE, RedisError, RuntimeError) as error:
                # redis-py raises RuntimeError when the pub/sub connection is gone entirely.
                self._subscriber_connected = False
                logger.warning("redis subscriber lost its connection: %r", error)
                await self._resubscribe()
                continue
            if message is not None:
                self._dispatch(message)

    async def _resubscribe(self) -> None:
        """Open a new pub/sub connection and subscribe every channel again, until it works."""
        delay = 0.2
        attempt = 0
        while True:
            await asyncio.sleep(delay)
            attempt += 1
            async with self._subscribe_lock:
                replacement = self._redis.pubsub()
                try:
                    await replacement.subscribe(CONTROL_CHANNEL, *self._channels)
                except (*_UNAVAILABLE, RedisError) as error:
                    await _close_quietly(replacement)
                    if attempt == 1 or attempt % 10 == 0:
                        logger.warning("redis resubscribe attempt %d failed: %r", attempt, error)
                    delay = min(delay * 2, 5.0)
                    continue
                old, self._pubsub = self._pubsub, replacement
                self._subscriber_connected = True
                for channel in self._channels:
                    # The confirmation of the new subscription counts for waiting callers.
                    self._confirmations.setdefault(channel, asyncio.Event())
            await _close_quietly(old)
            logger.info(
                "redis subscriber reconnected after %d attempts; %d channels resubscribed",
                attempt,
                len(self._channels),
            )
            # Events published while the connection was down reached no subscriber here,
            # so every socket fetches its job's history again.
            for subscribers in self._channels.values():
                for subscription in subscribers:
                    subscription.interrupt()
            return

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message["channel"].decode()
        if message["type"] == "subscribe":
            confirmed = self._confirmations.get(channel)
            if confirmed is not None:
                confirmed.set()
            return
        if message["type"] != "message" or channel == CONTROL_CHANNEL:
            return
        subscribers = self._channels.get(channel)
        if not subscribers:
            return
        head, _, frame = message["data"].partition(b"\n")
        seq_text, event_type, kind = head.decode().split(" ")
        event = Event(
            seq=int(seq_text), type=event_type, frame=frame.decode() if kind == "t" else frame
        )
        for subscription in list(subscribers):
            subscription.deliver(event)


async def _close_quietly(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except (*_UNAVAILABLE, RedisError, RuntimeError) as error:
        logger.debug("closing a broken pub/sub connection failed: %r", error)


def _redacted(url: str) -> str:
    """Return `url` without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
