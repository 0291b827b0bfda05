"""Symbols as TradingView writes them (``EXCHANGE:TICKER``) and the screener each one lives in.

The scanner is sharded by market: a ticker sent to the wrong screener is silently left out of
the answer (still ``200``), so a wrong table entry looks exactly like a dead symbol. That is why
the screener is derived from the exchange prefix here, once, instead of being guessed by callers,
and why an exchange the table does not know is refused up front (:class:`UnknownExchange`)
rather than sent somewhere and lost.

Brokers that list several markets (``OANDA`` also quotes metals and index CFDs) are mapped to the
market most users ask them for; deployments that need otherwise pass their own table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType


def _table(groups: Mapping[str, tuple[str, ...]]) -> Mapping[str, str]:
    table = {exchange: screener for screener, exchanges in groups.items() for exchange in exchanges}
    return MappingProxyType(table)


#: Default exchange prefix -> scanner screener (the ``{screener}`` in ``/{screener}/scan``).
SCREENERS: Mapping[str, str] = _table(
    {
        "forex": (
            "FX_IDC", "FX", "OANDA", "FOREXCOM", "FXCM", "SAXO", "PEPPERSTONE", "ICMARKETS",
            "FXOPEN", "EIGHTCAP",
        ),
        "crypto": (
            "BINANCE", "BINANCEUS", "BITSTAMP", "COINBASE", "KRAKEN", "BYBIT", "OKX", "BITFINEX",
            "KUCOIN", "GEMINI", "HUOBI", "HTX", "BITGET", "MEXC", "GATEIO", "POLONIEX", "BITMEX",
            "DERIBIT", "UPBIT", "BITHUMB", "PHEMEX", "CRYPTO",
        ),
        "america": ("NASDAQ", "NYSE", "AMEX", "NYSEARCA", "OTC", "CBOE"),
        "cfd": ("TVC",),
        "futures": ("CME", "CME_MINI", "CBOT", "NYMEX", "COMEX"),
        "germany": ("FWB", "XETR"),
        "uk": ("LSE",),
        "canada": ("TSX", "TSXV"),
        "india": ("NSE", "BSE"),
        "japan": ("TSE",),
        "australia": ("ASX",),
        "hongkong": ("HKEX",),
        "switzerland": ("SIX",),
        "turkey": ("BIST",),
    }
)  # fmt: skip

MAX_EXCHANGE = 32
MAX_TICKER = 40
_SHOWN = 32

# Exchanges are identifiers (FX_IDC, CME_MINI). Tickers also carry TradingView's punctuation:
# share classes (BRK.B), perpetuals (BTCUSDT.P), continuous futures (ES1!), dashes (BAJAJ-AUTO)
# and underscores (M_M). "/" is left out on purpose: "A/B" is a chart expression (a ratio),
# which the scanner cannot scan.
_EXCHANGE = re.compile(r"[A-Z][A-Z0-9_]*")
_TICKER = re.compile(r"[A-Z0-9][A-Z0-9._!\-]*")


class SymbolError(ValueError):
    """Not something that can be sent to the scanner as ``EXCHANGE:TICKER``."""


class UnknownExchange(SymbolError):
    """Well-formed, but no screener is known for the exchange, so the scanner could not find it."""

    def __init__(self, exchange: str) -> None:
        super().__init__(f"unknown exchange {_shown(exchange)}")
        self.exchange = exchange


def _shown(text: str) -> str:
    """Quote user input for an error message, cut short and printable ASCII only.

    Messages go back over the socket and into logs: a megabyte of input, or control
    characters, must not travel with them.
    """
    head = "".join(c if c.isascii() and c.isprintable() else "?" for c in text[:_SHOWN])
    return repr(head + "..." if len(text) > _SHOWN else head)


def _exchange(text: str, screeners: Mapping[str, str]) -> str:
    if len(text) > MAX_EXCHANGE or not _EXCHANGE.fullmatch(text):
        raise SymbolError(f"bad exchange {_shown(text)}")
    if text not in screeners:
        raise UnknownExchange(text)
    return text


def parse_symbol(
    text: object, default_exchange: str, screeners: Mapping[str, str] = SCREENERS
) -> str:
    """Normalise client input to the scanner's ``EXCHANGE:TICKER``, or raise :class:`SymbolError`.

    A bare ticker (``usdjpy``) takes ``default_exchange``, so the common case stays short for
    users of the seed bot, which only knew one exchange.
    """
    if not isinstance(text, str):
        raise SymbolError(f"symbol must be a string, not {type(text).__name__}")
    cleaned = text.strip().upper()
    exchange, colon, ticker = cleaned.rpartition(":")
    if not colon:
        exchange = default_exchange.strip().upper()
    elif not exchange:
        raise SymbolError(f"missing exchange in {_shown(text.strip())}")
    if not ticker:
        raise SymbolError(f"missing ticker in {_shown(text.strip())}")
    if len(ticker) > MAX_TICKER or not _TICKER.fullmatch(ticker):
        raise SymbolError(f"bad ticker {_shown(ticker)}")
    return f"{_exchange(exchange, screeners)}:{ticker}"


def screener_for(symbol: str, screeners: Mapping[str, str] = SCREENERS) -> str:
    """The screener of an already normalised symbol (the output of :func:`parse_symbol`)."""
    exchange, colon, _ = symbol.partition(":")
    if not colon:
        raise SymbolError(f"not EXCHANGE:TICKER: {_shown(symbol)}")
    try:
        return screeners[exchange]
    except KeyError:
        raise UnknownExchange(exchange) from None
