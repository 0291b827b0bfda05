"""The broker a node runs, chosen by the URL's scheme, as broadcaster picks its backend."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from quartsig.cluster.broker import Broker, Handler
from quartsig.cluster.memory import MemoryBroker
from quartsig.cluster.redisbroker import RedisBroker
from quartsig.config import ConfigError, Settings
from quartsig.domain.protocol import Vocabulary
from quartsig.ops.metrics import Metrics

#: Schemes of a cluster store; no URL at all means one process, in memory.
SCHEMES = ("redis", "rediss", "unix")


def open_broker(settings: Settings, handler: Handler, vocabulary: Vocabulary, *,
                metrics: Metrics | None = None,
                identity: Mapping[str, str] | None = None) -> Broker:
    """Memory when ``QUARTSIG_REDIS_URL`` (or the platform's ``REDIS_URL``) is unset, else
    Redis (``redis://``, ``rediss://`` for TLS, ``unix://``)."""
    url = settings.redis_url
    if not url:
        return MemoryBroker(handler)
    if urlsplit(url).scheme not in SCHEMES:
        raise ConfigError(f"QUARTSIG_REDIS_URL: unknown scheme; use one of "
                          f"{', '.join(s + '://' for s in SCHEMES)}")
    return RedisBroker.from_settings(settings, handler, vocabulary, metrics, identity)
