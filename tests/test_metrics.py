"""Metrics an operator can alert on (issue #24.4), and the alert rules checked against a scrape."""

from __future__ import annotations

import re
from pathlib import Path

from cryptography.fernet import Fernet
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from quartsig import __version__
from quartsig.app import FeedComponent, create_app, state_of
from quartsig.config import Settings
from quartsig.fanout.connection import Connection
from quartsig.ops.metrics import Metrics
from tests.support.net import eventually
from tests.support.standin import serve_standin

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "docs" / "prometheus-rules.yml"


async def test_bytes_sent_counts_utf8_bytes_not_characters() -> None:
    metrics = Metrics()
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)

    connection = Connection(send, on_frame=metrics.frame_sent)
    connection._sent('{"symbol":"BIST:ŞEKER"}')  # Ş is two bytes in UTF-8
    connection._sent('{"a":1}')
    assert metrics.frames_sent == 2
    assert metrics.chars_sent == len('{"symbol":"BIST:ŞEKER"}'.encode()) + 7


def _scrape(metrics: Metrics) -> dict[str, float]:
    return {sample.name + str(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
            for sample in family.samples}


async def _node_scrape(tmp_path: Path) -> str:
    runner, url = await serve_standin("127.0.0.1", 0, seed=3)
    try:
        settings = Settings.from_env({}, data_dir=tmp_path, scanner_url=url, interval=1.0,
                                     secret_keys=(Fernet.generate_key().decode(),))
        app = create_app(settings, components=[FeedComponent()])
        async with app.test_app():
            state = state_of(app)
            await eventually(lambda: state.collector is not None and state.collector.ticks >= 1,
                             30.0, what="a first tick")
            state.metrics.task_failures.labels(task="collector")  # a series, as after a failure
            response = await app.test_client().get("/metrics")
            return (await response.get_data()).decode()
    finally:
        await runner.cleanup()


async def test_a_scrape_has_build_process_upstream_redis_readiness_and_data_age(
        tmp_path: Path) -> None:
    text = await _node_scrape(tmp_path)
    samples = {sample.name: sample for family in text_string_to_metric_families(text)
               for sample in family.samples}
    assert samples["quartsig_build_info"].labels["version"] == __version__
    assert samples["process_resident_memory_bytes"].value > 0
    assert samples["quartsig_upstream_up"].value == 1.0
    assert samples["quartsig_redis_up"].value == 1.0  # standalone: nothing to lose
    assert samples["quartsig_ready"].value == 1.0
    assert 0.0 <= samples["quartsig_data_age_seconds"].value < 30.0
    assert samples["quartsig_tasks_failing"].value == 0.0


def _alert_expressions() -> list[tuple[str, str]]:
    """(alert, expr) of every rule in the rules file (written one ``expr:`` line a rule)."""
    text = RULES.read_text()
    alerts = re.findall(r"^\s*- alert:\s*(\S+)", text, re.MULTILINE)
    exprs = re.findall(r"^\s*expr:\s*(.+)$", text, re.MULTILINE)
    assert alerts and len(alerts) == len(exprs), "one expr: line per alert"
    return list(zip(alerts, exprs, strict=True))


async def test_every_alert_rule_reads_series_a_real_scrape_has(tmp_path: Path) -> None:
    text = await _node_scrape(tmp_path)
    names = {sample.name for family in text_string_to_metric_families(text)
             for sample in family.samples}
    for alert, expr in _alert_expressions():
        used = set(re.findall(r"\b((?:quartsig|process)_[a-z_]+)\b", expr))
        assert used, f"{alert} reads no quartsig series"
        missing = used - names
        assert not missing, f"{alert}: {sorted(missing)} not in a real /metrics scrape"
