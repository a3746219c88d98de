"""A token bucket shared by every worker (Redis), for a brand's send rate.

With Redis configured (``REDIS_URL``), the bucket lives in Redis and one Lua
script takes tokens atomically, so the limit holds across processes and hosts.
Without Redis (the embedded dev setup) the cache stands in, which is exact for
a single worker process.
"""

from __future__ import annotations

import time
from functools import cache

from django.conf import settings
from django.core.cache import cache as django_cache

# KEYS[1] bucket; ARGV: capacity, refill per second, wanted, now. Returns {granted, wait_ms}.
_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + (now - at) * rate)
local granted = math.min(wanted, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], 3600)
local wait = 0
if granted == 0 then wait = math.ceil((1 - tokens) / rate * 1000) end
return {granted, wait}
"""


@cache
def _script():  # type: ignore[no-untyped-def]
    import redis

    client = redis.Redis.from_url(str(settings.REDIS_URL))
    return client.register_script(_TAKE)


def take(key: str, wanted: int, *, per_minute: int) -> tuple[int, float]:
    """Take up to ``wanted`` tokens; returns (granted, seconds to wait when none)."""
    rate = per_minute / 60.0
    capacity = max(1, min(per_minute, wanted))  # bursts never exceed one batch or a minute's worth
    now = time.time()
    if settings.REDIS_URL:
        granted, wait_ms = _script()(keys=[f"assent:rate:{key}"], args=[capacity, rate, wanted, now])
        return int(granted), int(wait_ms) / 1000
    state = django_cache.get(f"rate:{key}") or (capacity, now)
    tokens = min(capacity, state[0] + (now - state[1]) * rate)
    granted = int(min(wanted, tokens))
    django_cache.set(f"rate:{key}", (tokens - granted, now), 3600)
    return granted, 0.0 if granted else (1 - (tokens - granted)) / rate
