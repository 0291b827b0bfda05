"""quartsig.server: what ``quartsig serve`` does to the process besides Hypercorn's config."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from hypercorn.config import Config

from quartsig import server


def test_a_serving_process_collects_less_eagerly_and_never_walks_start_up_again() -> None:
    before = gc.get_threshold()
    try:
        server.tune_gc()
        assert gc.get_threshold() == server.GC_THRESHOLDS
        assert server.GC_THRESHOLDS[0] > before[0]
        assert gc.get_freeze_count() > 0  # start-up's objects: out of every collection
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_run_tunes_the_collector_before_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(server, "tune_gc", lambda: calls.append("gc"))

    async def serve(app: Any, config: Any) -> None:
        calls.append("serve")

    monkeypatch.setattr(server, "serve_until_signalled", serve)
    config = Config()
    config.worker_class = "asyncio"
    server.run(object(), config)  # type: ignore[arg-type]
    assert calls == ["gc", "serve"]
