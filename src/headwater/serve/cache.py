"""The metric endpoints' answers, cached in the process, and the routes' HTTP handlers.

Fifty dashboards asking for the same metric cost one query: an answer is kept, keyed by

* the route and its parameters (defaults filled in; ``where`` filters in their order),
* the principal's **role** — a viewer's answer went through
  :func:`~headwater.serve.privacy.viewer_result`, an analyst's only through the floor, so
  roles never share an entry,
* the home's root, its ``serve.k_anonymity``, and the models configuration file's stat (a
  funnel's steps, an experiment's variants),

and it is served while **every table its computation read is still at the Delta version it
read** (:func:`headwater.lake.sql.reads` records them, whatever path read them: a gold table,
or silver.events and the models between it and the gold table for a request computed on
read; :func:`headwater.lake.sql.unchanged` checks them with a few stats per table). A commit
is therefore visible to the next request. Answers that depend on the clock also expire after
``max_age_s``: :data:`LIVE_MAX_AGE_S` (0.5 s) for ``/api/live``, whose window ends *now* (its
tables change with every stream batch anyway; 0.5 s is half the event-to-dashboard freshness
target), :data:`MAX_AGE_S` for the daily metrics (a default range ends today when a table has
no data yet).

Bounded: at most :data:`MAX_ENTRIES` answers per process, the least recently used evicted.
Single flight: requests for a missing or outdated answer wait for the one computing it,
rather than all computing it. Errors are not cached. An answer is shared: callers get a
shallow copy of its body, and must not change its rows.

HTTP (:func:`route`). Each metric route is served by an ``async`` handler with the route
function's parameters: a valid cached answer is sent from the event loop as the JSON bytes
encoded once (pydantic's JSON of the dict, what FastAPI sends for a ``dict`` route); anything
else runs the route in a worker thread, at most :data:`THREADS` at a time (DuckDB
parallelises inside a query and the cores are few: more threads contend), so fifty waiting
clients are fifty cheap coroutines, not fifty threads holding the GIL in turn. In front of
FastAPI, :class:`FastPath` answers a request whose path, query string and role already have a
valid answer without FastAPI's parameter parsing (~0.1 ms a request instead of ~0.5 ms). The
route functions themselves stay plain functions (the dashboard calls them in-process) that
answer from the same cache; ``fn.__wrapped__`` is the uncached function.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from fastapi import Request, Response
from pydantic import TypeAdapter

from headwater.config import Home
from headwater.errors import HeadwaterError
from headwater.lake import sql as lake_sql
from headwater.models import config as model_config
from headwater.serve.access import Principal, TokenStore

MAX_ENTRIES = 256
MAX_AGE_S = 60.0
LIVE_MAX_AGE_S = 0.5
THREADS = 4

_JSON = TypeAdapter(dict)
F = TypeVar("F", bound=Callable[..., dict])


@dataclass
class Entry:
    """A cached answer: ``body``, the ``reads`` its computation made (table versions), and
    when it expires (``time.monotonic()`` seconds)."""

    body: dict
    reads: dict
    expires: float
    _json: bytes | None = field(default=None, repr=False)

    def valid(self) -> bool:
        return time.monotonic() < self.expires and lake_sql.unchanged(self.reads)

    def json(self) -> bytes:
        """The body as the JSON bytes of the HTTP answer (encoded once)."""
        if self._json is None:
            self._json = _JSON.dump_json(self.body)
        return self._json


class Cache:
    """A bounded LRU of :class:`Entry` by key, thread-safe, with single-flight computation."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, Entry] = OrderedDict()
        self._computing: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get(self, key: tuple) -> Entry | None:
        """The valid entry of ``key``, else ``None``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        return entry if entry is not None and entry.valid() else None

    def put(self, key: tuple, entry: Entry) -> None:
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def compute(self, key: tuple, answer: Callable[[], dict], max_age_s: float) -> Entry:
        """The valid entry of ``key``, computed with ``answer()`` unless another thread is
        computing it (then its result, once ready) or it is there already."""
        with self._lock:
            lock = self._computing.setdefault(key, threading.Lock())
        try:
            with lock:
                entry = self.get(key)
                if entry is None:
                    with lake_sql.reads() as reads:
                        body = answer()
                    entry = Entry(body, reads, time.monotonic() + max_age_s)
                    self.put(key, entry)
        finally:
            with self._lock:
                self._computing.pop(key, None)
        return entry


CACHE = Cache()


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _config_stamp(home: Home) -> tuple:
    path = model_config.path(home)
    st = os.stat(path)
    return (str(path), st.st_mtime_ns, st.st_size)


class _Cached:
    """A route function answering from :data:`CACHE`."""

    def __init__(self, fn: Callable[..., dict], max_age_s: float):
        self.fn = fn
        self.signature = inspect.signature(fn)
        self.max_age_s = max_age_s

    def key(self, home: Home, principal: Principal, args: tuple, kwargs: dict) -> tuple[tuple, inspect.BoundArguments]:
        bound = self.signature.bind(home, principal, *args, **kwargs)
        bound.apply_defaults()
        params = tuple((name, _hashable(v)) for name, v in bound.arguments.items() if name not in ("home", "principal"))
        key = (self.fn.__module__, self.fn.__qualname__, params, principal.role, str(home.root),
               home.settings.serve.k_anonymity, _config_stamp(home))
        return key, bound

    def compute(self, key: tuple, bound: inspect.BoundArguments) -> Entry:
        return CACHE.compute(key, lambda: self.fn(*bound.args, **bound.kwargs), self.max_age_s)

    def compute_json(self, key: tuple, bound: inspect.BoundArguments) -> Entry:
        entry = self.compute(key, bound)
        entry.json()  # encoded here, in the worker thread, not in the event loop
        return entry


def cached(max_age_s: float = MAX_AGE_S) -> Callable[[F], F]:
    """Make a route function ``fn(home, principal, **params) -> dict`` answer from the cache
    (same signature; the answer is a shallow copy of the cached body)."""

    def decorate(fn: F) -> F:
        route = _Cached(fn, max_age_s)

        @functools.wraps(fn)
        def call(home: Home, principal: Principal, *args: Any, **kwargs: Any) -> dict:
            key, bound = route.key(home, principal, args, kwargs)
            return dict((CACHE.get(key) or route.compute(key, bound)).body)

        call.cached = route  # type: ignore[attr-defined]
        return call  # type: ignore[return-value]

    return decorate


def route(register: Callable[[Callable], Any], max_age_s: float = MAX_AGE_S) -> Callable[[F], F]:
    """:func:`cached`, and serve it over HTTP: ``register`` (e.g. ``router.get(path, ...)``)
    gets an ``async`` handler with ``fn``'s parameters (module docstring)."""

    def decorate(fn: F) -> F:
        call = cached(max_age_s)(fn)
        cache: _Cached = call.cached  # type: ignore[attr-defined]

        async def handler(request: Request, **kwargs: Any) -> Response:
            home, principal = kwargs.pop("home"), kwargs.pop("principal")
            key, bound = cache.key(home, principal, (), kwargs)
            entry = CACHE.get(key)
            if entry is None:
                entry = await anyio.to_thread.run_sync(cache.compute_json, key, bound, limiter=_limiter())
            if (made := request.scope.get(_MADE)) is not None:
                made["entry"] = entry  # for FastPath: the answer of this path, query and role
            return Response(entry.json(), media_type="application/json")

        # FastAPI reads the parameters (queries, paths, dependencies; the request) and the
        # response model from the signature; the annotations are evaluated here, in fn's module.
        signature = inspect.signature(fn, eval_str=True)
        request = inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request)
        handler.__signature__ = signature.replace(parameters=[*signature.parameters.values(), request])  # type: ignore[attr-defined]
        handler.__name__, handler.__qualname__, handler.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        register(handler)
        return call

    return decorate


_MADE = "headwater.cache.made"  # the ASGI scope's key where a handler leaves its answer for FastPath


class FastPath:
    """ASGI middleware of the query API: a ``GET`` whose path, query string and role (of a
    valid bearer token, authenticated here as for every request) already have a valid cached
    answer is answered before FastAPI resolves, parses and validates anything — that costs
    ~0.4 ms a request, several times the rest. The answer is the one FastAPI's handler gave
    for the same path and query string (a function of them), remembered after it ran; a
    request without such an answer, or with a missing or bad token, goes through FastAPI.
    Bounded like :data:`CACHE`, validity as :class:`Entry`."""

    def __init__(self, app: Any, home: Home, tokens: TokenStore):
        self.app, self.home, self.tokens = app, home, tokens
        self.answers = Cache()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        key = self._key(scope) if scope["type"] == "http" and scope["method"] == "GET" else None
        entry = self.answers.get(key) if key is not None else None
        if entry is not None:
            body = entry.json()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        scope[_MADE] = made = {}
        await self.app(scope, receive, send)
        if key is not None and "entry" in made:
            self.answers.put(key, made["entry"])

    def _key(self, scope: dict) -> tuple | None:
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer":
            return None
        try:
            principal = self.tokens.authenticate(token.strip())
        except HeadwaterError:
            return None  # FastAPI answers it (401)
        return (scope["path"], scope["query_string"], principal.role, _config_stamp(self.home))


_LIMITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = weakref.WeakKeyDictionary()


def _limiter() -> anyio.CapacityLimiter:
    """The worker-thread limiter of the running event loop (:data:`THREADS` tokens)."""
    loop = asyncio.get_running_loop()
    limiter = _LIMITERS.get(loop)
    if limiter is None:
        limiter = _LIMITERS[loop] = anyio.CapacityLimiter(THREADS)
    return limiter
