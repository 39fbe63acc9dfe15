"""Request rate limits: DRF throttles that count in Redis (the default cache).

DRF's own SimpleRateThrottle keeps a list of timestamps per client and writes it back on every
request: a read-modify-write that parallel requests all pass at once (a brute-force script only
has to send its guesses concurrently), and a list of 1000 entries rewritten per request at
1000/min. These count instead: one atomic INCR per request on a key of the current window (and a
read of the previous window's count, in the same round trip to Redis), so that the n-th request is
refused however many arrive together. The per-user count is made during the JWT authentication,
in the round trip that reads the cached user (UserRateThrottle.count_ahead), on the views where
every authenticated request reaches the throttle anyway.

A window of the rate's period has its own counter; a request counts the current window's
requests plus the previous window's, weighted by how much of it still lies within the last period
(a sliding window, approximated with two counters: no burst of twice the rate where two fixed
windows meet). A refused request is a 429 with Retry-After, the seconds until one more request
would pass; it is not counted, so asking again sooner does not push that time back.

Redis down must not take the API with it, nor turn the limits off (a login brute force would
only have to wait for an outage): a failed count is made in the process instead, and for the next
FAIL_OPEN_SECONDS this process counts there without asking Redis (a Redis host that does not
answer would otherwise cost every request its connect timeout). Counted per process, a limit
lets through up to its rate times the number of API processes: bounded, where it was unlimited.
"""

import hashlib
import ipaddress
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.core.cache import caches
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

logger = logging.getLogger(__name__)

FAIL_OPEN_SECONDS = 5.0
_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """ "5/min" -> (5, 60). Periods: s, sec, m, min, h, hour, d, day (DRF's forms)."""
    count, _, period = rate.partition("/")
    seconds = _PERIODS.get(period.strip()[:1].lower())
    if not count.strip().isdigit() or seconds is None:
        raise ValueError(f"Not a rate: {rate!r} (expected e.g. 5/min, 1000/hour).")
    return int(count), seconds


def key_part(value: str) -> str:
    """A bounded, uniform cache key part for an email or an address."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]


class _Breaker:
    """Process-wide: after a failed count, do not ask Redis for a while (count in the
    process)."""

    def __init__(self) -> None:
        self._open_until = 0.0
        self._lock = threading.Lock()

    def is_open(self) -> bool:
        return time.monotonic() < self._open_until

    def trip(self) -> None:
        with self._lock:
            if not self.is_open():
                logger.warning(
                    "Rate limits count in each process, and users are not cached, for %.0f s: "
                    "the cache (Redis) did not answer",
                    FAIL_OPEN_SECONDS,
                )
            self._open_until = time.monotonic() + FAIL_OPEN_SECONDS

    def reset(self) -> None:
        self._open_until = 0.0


breaker = _Breaker()


class _LocalCounts:
    """The counters of this process, for while Redis is away: the same keys and windows as in
    Redis, so a limit keeps its meaning (per process). Bounded: past MAX_KEYS the expired
    windows go, then the oldest keys (a flood of idents makes some counts restart, never
    grows memory)."""

    MAX_KEYS = 50_000

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (count, monotonic expiry)
        self._lock = threading.Lock()

    def hit(self, key: str, ttl: int, previous_key: str) -> tuple[int, int, None]:
        now = time.monotonic()
        with self._lock:
            count = self._live(key, now) + 1
            self._counts[key] = (count, self._counts.get(key, (0, now + ttl))[1])
            if len(self._counts) > self.MAX_KEYS:
                self._shrink(now)
            return count, self._live(previous_key, now), None

    def uncount(self, key: str) -> None:
        with self._lock:
            count, expires = self._counts.get(key, (0, 0.0))
            if count > 0:
                self._counts[key] = (count - 1, expires)

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()

    def _live(self, key: str, now: float) -> int:
        count, expires = self._counts.get(key, (0, now))
        if expires <= now:
            self._counts.pop(key, None)
            return 0
        return count

    def _shrink(self, now: float) -> None:
        self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
        excess = len(self._counts) - self.MAX_KEYS // 2
        if excess > 0:  # dicts keep insertion order: the oldest keys first
            for key in list(self._counts)[:excess]:
                del self._counts[key]


local_counts = _LocalCounts()


def count_hit(
    key: str, ttl: int, previous_key: str, *, also_get: str | None = None
) -> tuple[int, int, Any] | None:
    """Add one to `key` (created with `ttl` seconds to live) and read `previous_key`: (the new
    count, the previous count, the cached value of `also_get` or None), in one round trip to
    Redis; None if the cache did not answer."""
    cache = caches["default"]
    client: Any = getattr(cache, "client", None)
    get_client = getattr(client, "get_client", None)
    if get_client is None:  # not django-redis: the cache API, two round trips (three)
        counts = _count_hit_with_cache_api(key, ttl, previous_key)
        if counts is None:
            return None
        return (*counts, cache.get(also_get) if also_get is not None else None)
    try:
        pipe = get_client(write=True).pipeline(transaction=False)
        current = cache.make_key(key)
        pipe.set(current, 0, ex=ttl, nx=True)  # the window's first request creates it, with a TTL
        pipe.incr(current)
        pipe.get(cache.make_key(previous_key))
        if also_get is not None:
            pipe.get(cache.make_key(also_get))
        _, count, previous, *also = pipe.execute()
        value = client.decode(also[0]) if also and also[0] is not None else None
    except Exception as exc:  # Redis away: the caller fails open
        logger.debug("Rate limit count failed: %s", exc)
        return None
    try:
        return int(count), int(previous or 0), value
    except ValueError:  # a value of another kind under the key: count nothing
        return None


def _count_hit_with_cache_api(key: str, ttl: int, previous_key: str) -> tuple[int, int] | None:
    cache = caches["default"]
    try:
        try:
            count = cache.incr(key)  # one round trip while the window's key exists
        except ValueError:  # no such key yet: the window's first request (or a racing first)
            added = cache.add(key, 1, ttl)
            if added is None:  # a cache that swallows its errors did not answer
                return None
            count = 1 if added else cache.incr(key)
    except ValueError:  # expired between add and incr (the window just ended): a first request
        count = 1
    except Exception:  # a cache that does not swallow its connection errors
        logger.exception("Rate limit count failed")
        return None
    if not isinstance(count, int):
        return None
    previous = cache.get(previous_key) or 0
    return count, previous if isinstance(previous, int) else 0


class RateThrottle(BaseThrottle):
    """Counts requests per `ident(request)` under `scope`, at the rate the settings give the scope
    (REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], read on every request, so tests can change it).
    A scope without a rate, or a request without an ident, is not limited."""

    scope: str = ""

    def __init__(self) -> None:
        self._wait: float | None = None

    def ident(self, request: Request, view: Any) -> str | None:
        raise NotImplementedError

    def rate(self) -> str | None:
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)
        return str(rate) if rate else None

    def allow_request(self, request: Request, view: Any) -> bool:
        rate = self.rate()
        if not rate:
            return True
        ident = self.ident(request, view)
        if ident is None:
            return True
        limit, period = parse_rate(rate)
        ahead = _counted_ahead(request, self.scope)
        counts: tuple[int, int, Any] | None = None
        if ahead is not None and (ahead.ident, ahead.period) == (ident, period):
            window, into, counts = ahead.window, ahead.into, ahead.counts
        else:
            window, into = divmod(time.time(), period)
            if not breaker.is_open():
                counts = count_hit(*self._keys(ident, window, period))
                if counts is None:
                    breaker.trip()
        counted_here = counts is None
        if counts is None:  # Redis away: this process counts (see the module's docstring)
            counts = local_counts.hit(*self._keys(ident, window, period))
        current, previous, _ = counts
        # The previous window's count weighs what is left of it in the last `period` seconds.
        elapsed = into / period
        if previous * (1 - elapsed) + current <= limit:
            return True
        # Refused, so not counted: Retry-After holds however often the client asks meanwhile.
        key = self._keys(ident, window, period)[0]
        if counted_here:
            local_counts.uncount(key)
        else:
            try:
                caches["default"].decr(key)
            except Exception:  # gone with its window, or Redis with it: nothing to take back
                logger.debug("Could not uncount a refused request", exc_info=True)
        self._wait = retry_after(limit, period, elapsed, previous, current - 1)
        return False

    def _keys(self, ident: str, window: float, period: int) -> tuple[str, int, str]:
        """(the window's counter, its time to live, the previous window's counter)."""
        key = f"throttle:{self.scope}:{ident}"
        return f"{key}:{int(window)}", 2 * period + 1, f"{key}:{int(window) - 1}"

    def wait(self) -> float | None:
        return None if self._wait is None else max(1.0, math.ceil(self._wait))


def retry_after(limit: int, period: int, elapsed: float, previous: int, counted: int) -> float:
    """Seconds until one more request would pass, `counted` requests counted in this window:
    later in this window (as the previous window's weight fades), or into the next one (as this
    window's does)."""
    left = (1 - elapsed) * period
    room = limit - counted - 1
    if room >= 0 and previous > 0:
        # previous * (1 - elapsed - t / period) + counted + 1 <= limit
        t = period * ((1 - elapsed) - room / previous)
        if t < left:
            return max(t, 0.0)
    if limit < 1:
        return left + period  # nothing ever passes; ask again in a while
    # counted * (1 - g) + 1 <= limit, g the fraction of the next window
    g = max(0.0, 1 - (limit - 1) / counted) if counted else 0.0
    return left + g * period


def client_address(request: Request) -> str:
    """The client's address (X-Forwarded-For only through the REST_FRAMEWORK["NUM_PROXIES"]
    proxies we trust). An IPv6 client counts as its /64: one host usually holds the whole /64."""
    raw = BaseThrottle().get_ident(request) or ""
    try:
        ip = ipaddress.ip_address(raw.strip().split("%", 1)[0])
    except ValueError:
        return raw[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


class UserRateThrottle(RateThrottle):
    """Every API request of an authenticated user (scope "user", USER_RATE)."""

    scope = "user"

    def ident(self, request: Request, view: Any) -> str | None:
        user = request.user
        return str(user.pk) if user is not None and user.is_authenticated else None

    @classmethod
    def count_ahead(cls, request: Request, user_id: Any, *, also_get: str) -> tuple[bool, Any]:
        """Count this request of user `user_id` now, while the authentication reads the user
        from the cache (key `also_get`): one round trip to Redis for both, where they were two
        (the second was 5% of a create's CPU). Returns (whether it was done, the cached value).

        Only on a view that will run this throttle and whose permissions let any authenticated
        user in: there, every request authenticated as `user_id` reaches the throttles, which take
        this count as their own (`allow_request`), so each request is counted once, as before.
        A request whose authentication then fails takes its count back (`uncount_ahead`)."""
        view = (getattr(request, "parser_context", None) or {}).get("view")
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(cls.scope)
        if view is None or not rate or breaker.is_open() or not _runs_throttle(view, cls):
            return False, None
        throttle = cls()
        ident = str(user_id)
        _, period = parse_rate(str(rate))
        window, into = divmod(time.time(), period)
        counts = count_hit(*throttle._keys(ident, window, period), also_get=also_get)
        if counts is None:
            breaker.trip()
            return False, None
        request._counted_ahead = _Ahead(cls.scope, ident, period, window, into, counts)  # type: ignore[attr-defined]
        return True, counts[2]

    @classmethod
    def uncount_ahead(cls, request: Request) -> None:
        ahead = _counted_ahead(request, cls.scope)
        if ahead is None:
            return
        try:
            caches["default"].decr(cls()._keys(ahead.ident, ahead.window, ahead.period)[0])
        except Exception:
            logger.debug("Could not uncount a request", exc_info=True)


@dataclass(frozen=True)
class _Ahead:
    """A request counted during its authentication (UserRateThrottle.count_ahead)."""

    scope: str
    ident: str
    period: int
    window: float
    into: float
    counts: tuple[int, int, Any]


def _counted_ahead(request: Request, scope: str) -> _Ahead | None:
    """The request's count made ahead for `scope`, taken (it serves once)."""
    ahead = request.__dict__.get("_counted_ahead")
    if ahead is None or ahead.scope != scope:
        return None
    del request.__dict__["_counted_ahead"]
    return ahead


# Permissions that any authenticated user passes: a view with only these reaches its throttles.
_OPEN_TO_USERS = (IsAuthenticated, AllowAny)


def _runs_throttle(view: Any, throttle: type[BaseThrottle]) -> bool:
    """Whether every request authenticated on `view` reaches `throttle` (DRF's own order:
    authentication, permissions, throttles; none of the three overridden by the view)."""
    from rest_framework.views import APIView  # not at import: DRF's settings import this module

    cls = type(view)
    return (
        isinstance(view, APIView)
        and cls.initial is APIView.initial
        and cls.get_permissions is APIView.get_permissions
        and cls.check_permissions is APIView.check_permissions
        and cls.get_throttles is APIView.get_throttles
        and cls.check_throttles is APIView.check_throttles
        and throttle in view.throttle_classes
        and all(p in _OPEN_TO_USERS for p in view.permission_classes)
    )


class AddressRateThrottle(RateThrottle):
    """Requests per client address; subclasses name the scope."""

    def ident(self, request: Request, view: Any) -> str | None:
        return key_part(client_address(request))
