"""Prometheus series, one registry per app so that tests and several apps never collide.

The ``/metrics`` route that serves them lives in :mod:`quartsig.web.api`."""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "quartsig_connections", "Open, authenticated connections", registry=r
        )
        self.subscriptions = Gauge("quartsig_subscriptions", "Subscriptions held", registry=r)
        self.keys = Gauge(
            "quartsig_keys", "Distinct (profile, symbol, tf) keys watched", registry=r
        )
        #: Counted in plain ints on the hot path, exported at scrape time (see _Sent).
        self.frames_sent = 0
        self.chars_sent = 0
        r.register(_Sent(self))
        self.closes = Counter(
            "quartsig_closes", "Connections closed, by code", ["code"], registry=r
        )
        self.slow_closes = Counter(
            "quartsig_slow_closes",
            "Connections closed because they fell hopelessly behind",
            registry=r,
        )
        self.refused = Counter(
            "quartsig_connections_refused",
            "Sockets refused over a connection cap, by cap (total, address, account)",
            ["cap"], registry=r,
        )
        self.expired = Counter(
            "quartsig_sessions_expired", "Connections closed 4401 because their token expired",
            registry=r,
        )
        self.revoked = Counter(
            "quartsig_sessions_revoked",
            "Connections closed 4403 because their account was disabled", registry=r,
        )
        self.pending = Gauge(
            "quartsig_connections_pending", "Sockets open but not yet authenticated", registry=r
        )
        self.fanout = Histogram(
            "quartsig_fanout_seconds", "Time to hand one tick's changes to every writer",
            buckets=_FAST, registry=r,
        )
        self.tick = Histogram(
            "quartsig_tick_seconds", "Collector tick duration, fetch included",
            buckets=_SLOW, registry=r,
        )
        self.upstream = Counter(
            "quartsig_upstream_requests", "Scanner requests by outcome", ["outcome"], registry=r
        )
        self.cells = Counter("quartsig_upstream_cells", "Scanner cells requested", registry=r)
        self.lease = Gauge(
            "quartsig_lease_held", "1 while this node holds the collector's lease", registry=r
        )
        self.term = Gauge("quartsig_term", "Fencing term this node last led", registry=r)
        self.fenced = Counter(
            "quartsig_fenced_publications",
            "Publications refused because this node no longer held the lease", registry=r,
        )
        self.stream_delay = Histogram(
            "quartsig_stream_delay_seconds",
            "From the leader's publication to this node applying it (cluster mode)",
            buckets=_FAST, registry=r,
        )
        self.redis_rejected = Counter(
            "quartsig_redis_rejected", "Entries read from Redis that were malformed and skipped",
            ["what"], registry=r,
        )
        self.profile_failures = Counter(
            "quartsig_profile_failures",
            "Failures charged to a plugin profile, by kind (exception, bad_value, slow, "
            "bad_column)",
            ["profile", "kind"], registry=r,
        )
        self.early_fetches = Counter(
            "quartsig_early_fetches", "Early fetches of keys nobody had, launched", registry=r
        )
        self.early_deferred = Counter(
            "quartsig_early_deferred_keys",
            "New keys left for the next full tick (reason: budget spent, throttled, or the "
            "account's early share spent: quota for keys, share for requests)",
            ["reason"], registry=r,
        )
        self.refusals = Counter(
            "quartsig_subscribe_refusals",
            "Subscriptions refused by a limit (code: quota_exceeded, key_limit)",
            ["code"], registry=r,
        )
        self.backoffs = Counter(
            "quartsig_throttle_backoffs", "Backoff steps after throttled fetches", registry=r
        )
        self.tasks = Gauge("quartsig_tasks", "asyncio tasks alive (leak watch)", registry=r)
        self.tasks.set_function(_tasks_alive)
        # -- operations (issue #24): what an operator alerts on --------------------------------
        self.task_failures = Counter(
            "quartsig_task_failures",
            "Failures of a supervised long-lived task, by task (each one restarted)",
            ["task"], registry=r,
        )
        self.tasks_failing = Gauge(
            "quartsig_tasks_failing", "Supervised tasks that keep failing (health: 503)",
            registry=r,
        )
        self.data_age = Gauge(
            "quartsig_data_age_seconds",
            "Seconds since this node last applied a publication of the collector", registry=r,
        )
        self.ready = Gauge(
            "quartsig_ready", "1 while /readyz answers 200 (this node serves fresh data)",
            registry=r,
        )
        self.upstream_up = Gauge(
            "quartsig_upstream_up", "1 while the upstream status clients hear is ok", registry=r
        )
        self.redis_up = Gauge(
            "quartsig_redis_up", "1 while Redis answers (cluster mode; 1 standalone)", registry=r
        )
        #: Filled by the state with the version (``quartsig_build_info``).
        self.build = Info("quartsig_build", "The running version", registry=r)
        self.build.info({"version": "unknown", "python": platform.python_version()})
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def frame_sent(self, frames: int, size: int) -> None:
        self.frames_sent += frames
        self.chars_sent += size

    def watch(
        self,
        connections: Callable[[], float],
        subscriptions: Callable[[], float],
        keys: Callable[[], float],
    ) -> None:
        """Gauges read at scrape time, so the hot path never updates them."""
        self.connections.set_function(connections)
        self.subscriptions.set_function(subscriptions)
        self.keys.set_function(keys)


class _Sent(Collector):
    """Frames and characters sent, as counters. A prometheus ``Counter.inc`` takes a lock,
    twice per frame per connection per tick; two int additions do not."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "quartsig_frames_sent", "WebSocket frames sent", value=self.metrics.frames_sent
        )
        yield CounterMetricFamily(
            "quartsig_bytes_sent", "Bytes (UTF-8) of frames sent", value=self.metrics.chars_sent
        )


def _tasks_alive() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # scraped outside the event loop
        return 0.0
