"""What ``quartsig serve --demo`` serves data from: a simulated market behind a faithful
stand-in of TradingView's scan endpoint.

- :mod:`quartsig.demo.market`: the simulation (values per ticker, timeframe and step);
- :mod:`quartsig.demo.scanner`: the scan endpoint over it, and :func:`serve_standin`;
- :mod:`quartsig.demo.telegram`: a Telegram Bot API stand-in (the tests' double for Telegram, and
  the bot's Telegram in ``serve --demo --bot``);
- :mod:`quartsig.demo.telegramchat`: its chat page, where a newcomer is the Telegram user.

The test-only stand-in with fault knobs and a request log is ``tests/support/standin.py``.
"""

from quartsig.demo.market import DEFAULT_UNIVERSE, NO_TECHNICALS, Market, synthetic_universe
from quartsig.demo.scanner import DemoScanner, create_scanner_app, serve_standin

__all__ = [
    "DEFAULT_UNIVERSE",
    "NO_TECHNICALS",
    "DemoScanner",
    "Market",
    "create_scanner_app",
    "serve_standin",
    "synthetic_universe",
]
