"""Logging set-up and the filter that keeps tokens (and forged lines) out of every log.

A token in a log is a credential in a file that outlives it by months and is
read by people who should never hold it. Rather than trusting each call site,
one filter rewrites every record, its arguments and its traceback text, on
every handler that writes quartsig's and Hypercorn's logs.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable

REDACTED = "[redacted]"

_PATTERNS = (
    # Fernet tokens: version byte 0x80 plus a timestamp below 2**40 always encode as gAAAAA.
    (re.compile(r"gAAAAA[A-Za-z0-9_\-]{8,}={0,2}"), REDACTED),
    # token=... in query strings, fragments and form bodies, whatever the value looks like.
    (re.compile(r"(?i)(\btoken=)[^&\s\"'#;,]+"), rf"\1{REDACTED}"),
    # the bot's bearer secret
    (re.compile(r"(?i)(\bbearer\s+)[^\s\"',;]+"), rf"\1{REDACTED}"),
    # a Telegram bot token, and the webhook's path derived from it (quartsig.telegram)
    (re.compile(r"\b\d{5,}:[A-Za-z0-9_-]{30,}"), REDACTED),
    (re.compile(r"(/telegram/)[0-9a-f]{32}"), rf"\1{REDACTED}"),
)

HYPERCORN_LOGGERS = ("hypercorn.error", "hypercorn.access")

# C0 controls but tab, DEL, C1 controls, and Unicode's own line and paragraph separators.
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape_controls(text: str) -> str:
    """``text`` with CR, LF and other control characters written as ``\\n``-style escapes.

    A log line is one record: a client's decoded path or a symbol with a newline in it
    must not start a line of its own that reads like another record.
    """
    return _CONTROLS.sub(_escape, text)


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Formats the message once, redacts it and escapes its control characters, and freezes
    it so no formatter sees the raw args.

    Tracebacks keep their line breaks (they are indented, and read as one block); only
    the message, which may carry what a client sent, is kept to one line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is logging's problem to report, not ours
            return True
        redacted = escape_controls(redact(message))
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class Sparse:
    """One report per ``period`` seconds, and how many were held back in between.

    For failures that strike every request at once, such as the account database
    being down during a reconnect storm: a traceback per connection would bury the
    log (and fill its disk) while saying nothing the first one did not.
    """

    def __init__(self, period: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self.clock = clock
        self.held = 0
        self._next = float("-inf")

    def due(self) -> int | None:
        """The number held back since the last report if one is due now, else ``None``."""
        now = self.clock()
        if now < self._next:
            self.held += 1
            return None
        self._next = now + self.period
        held, self.held = self.held, 0
        return held


_FILTER = RedactingFilter()


def _add_once(target: logging.Logger | logging.Handler) -> None:
    if not any(isinstance(existing, RedactingFilter) for existing in target.filters):
        target.addFilter(_FILTER)


def install(extra: Iterable[logging.Logger | str] = ()) -> None:
    """Put the filter on the root, Hypercorn's and ``extra`` loggers and on all their handlers.

    Logger filters catch records logged directly on them; handler filters
    catch records propagated from children. Call again after anything adds
    handlers (Hypercorn creates its own when its config is first used).
    """
    names: list[logging.Logger | str] = ["", *HYPERCORN_LOGGERS, *extra]
    for item in names:
        logger = item if isinstance(item, logging.Logger) else logging.getLogger(item or None)
        _add_once(logger)
        for handler in logger.handlers:
            _add_once(handler)


def configure(level: int = logging.INFO) -> None:
    """The CLI's logging: one stderr handler on the root, redacting from the first line."""
    logging.basicConfig(level=level, format=TEXT_FORMAT)
    install()


# -- operations (issue #24.6): probes out of the access log, JSON for log pipelines ----------

#: Paths a platform or Prometheus hits every few seconds: a line each would bury the log.
PROBES = ("/livez", "/readyz", "/healthz", "/metrics")
_PROBE = re.compile(r'"(?:GET|HEAD) (?:' + "|".join(map(re.escape, PROBES)) + r')[ ?"]')
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ProbeFilter(logging.Filter):
    """Drops Hypercorn's access lines of probes (``GET /healthz ...``); keeps every other."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return _PROBE.search(record.getMessage()) is None
        except Exception:
            return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and, if any, the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, object] = {
            "time": self.formatTime(record), "level": record.levelname,
            "logger": record.name, "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            body["exc"] = record.exc_text
        return json.dumps(body, ensure_ascii=False)


def setup(form: str = "text", probes: bool = False) -> None:
    """Apply the settings' log format to the root's handlers and, unless ``probes``, keep
    probes out of Hypercorn's access log."""
    formatter = JsonFormatter() if form == "json" else logging.Formatter(TEXT_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
    access = logging.getLogger("hypercorn.access")
    for existing in [f for f in access.filters if isinstance(f, ProbeFilter)]:
        access.removeFilter(existing)
    if not probes:
        access.addFilter(ProbeFilter())
