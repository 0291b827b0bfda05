"""parse_symbol() and the exchange -> screener table."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quartsig.domain.symbols import (
    MAX_EXCHANGE,
    MAX_TICKER,
    SCREENERS,
    SymbolError,
    UnknownExchange,
    parse_symbol,
    screener_for,
)

NORMALISED = re.compile(r"[A-Z][A-Z0-9_]*:[A-Z0-9][A-Z0-9._!\-]*")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("USDJPY", "FX_IDC:USDJPY"),
        ("  usdjpy\n", "FX_IDC:USDJPY"),
        ("oanda:eurusd", "OANDA:EURUSD"),
        ("BINANCE:BTCUSDT", "BINANCE:BTCUSDT"),
        ("BYBIT:BTCUSDT.P", "BYBIT:BTCUSDT.P"),
        ("NYSE:BRK.B", "NYSE:BRK.B"),
        ("CME_MINI:ES1!", "CME_MINI:ES1!"),
        ("NSE:BAJAJ-AUTO", "NSE:BAJAJ-AUTO"),
        ("NSE:M_M", "NSE:M_M"),
        ("TVC:DXY", "TVC:DXY"),
        ("X" * MAX_TICKER, "FX_IDC:" + "X" * MAX_TICKER),
    ],
)
def test_parse_symbol_normalises(text: str, expected: str) -> None:
    assert parse_symbol(text, "FX_IDC") == expected


def test_bare_ticker_takes_the_default_exchange_normalised() -> None:
    assert parse_symbol("aapl", " nasdaq ") == "NASDAQ:AAPL"


@pytest.mark.parametrize(
    "text",
    [
        "", "   ", ":", ":USDJPY", "FX_IDC:", "FX_IDC:USD JPY", "FX IDC:USDJPY", "A:B:C",
        "FX_IDC:EUR/USD", "FX_IDC:.USD", "FX_IDC:!", "1FX:USDJPY", "FX_IDC:USD\u00a5",
        "FX_IDC:" + "X" * (MAX_TICKER + 1), "X" * (MAX_EXCHANGE + 1) + ":USDJPY",
    ],
)  # fmt: skip
def test_garbage_is_a_symbol_error(text: str) -> None:
    with pytest.raises(SymbolError):
        parse_symbol(text, "FX_IDC")


@pytest.mark.parametrize("value", [None, 42, 1.5, b"USDJPY", ["USDJPY"], {"s": "USDJPY"}])
def test_non_strings_are_refused_by_type_name(value: object) -> None:
    with pytest.raises(SymbolError, match=type(value).__name__):
        parse_symbol(value, "FX_IDC")


def test_unknown_exchange_names_it_and_is_a_symbol_error() -> None:
    with pytest.raises(UnknownExchange, match="NOWHERE") as caught:
        parse_symbol("nowhere:abc", "FX_IDC")
    assert caught.value.exchange == "NOWHERE"
    assert isinstance(caught.value, SymbolError)


def test_unknown_default_exchange_is_refused_too() -> None:
    with pytest.raises(UnknownExchange, match="NOWHERE"):
        parse_symbol("USDJPY", "NOWHERE")


def test_a_custom_table_replaces_the_default() -> None:
    table = {"MYFX": "forex"}
    assert parse_symbol("eurusd", "MYFX", table) == "MYFX:EURUSD"
    with pytest.raises(UnknownExchange):
        parse_symbol("FX_IDC:EURUSD", "MYFX", table)


@given(st.text(min_size=41, max_size=2000))
def test_messages_never_echo_long_input(text: str) -> None:
    try:
        parse_symbol(text, "FX_IDC")
    except SymbolError as error:
        message = str(error)
        assert len(message) < 80
        assert not any(text[i : i + 41] in message for i in range(len(text) - 40))


@given(st.one_of(st.text(max_size=60), st.from_regex(NORMALISED, fullmatch=True)))
def test_parse_is_total_and_idempotent(text: str) -> None:
    try:
        symbol = parse_symbol(text, "FX_IDC")
    except SymbolError:
        return
    assert NORMALISED.fullmatch(symbol)
    assert parse_symbol(symbol, "BINANCE") == symbol
    assert screener_for(symbol) == SCREENERS[symbol.partition(":")[0]]


@pytest.mark.parametrize(
    ("symbol", "screener"),
    [
        ("FX_IDC:USDJPY", "forex"), ("OANDA:EURUSD", "forex"), ("FX:GBPUSD", "forex"),
        ("BINANCE:BTCUSDT", "crypto"), ("COINBASE:BTCUSD", "crypto"), ("KRAKEN:XBTUSD", "crypto"),
        ("NASDAQ:AAPL", "america"), ("NYSE:BRK.B", "america"), ("AMEX:SPY", "america"),
        ("TVC:DXY", "cfd"), ("XETR:SAP", "germany"), ("FWB:SAP", "germany"), ("LSE:VOD", "uk"),
        ("CME_MINI:ES1!", "futures"),
    ],
)  # fmt: skip
def test_screener_for(symbol: str, screener: str) -> None:
    assert screener_for(symbol) == screener


def test_screener_for_refuses_unknown_and_malformed() -> None:
    with pytest.raises(UnknownExchange):
        screener_for("NOWHERE:ABC")
    with pytest.raises(SymbolError):
        screener_for("USDJPY")


def test_every_table_entry_is_a_parseable_exchange_and_a_screener_path() -> None:
    for exchange, screener in SCREENERS.items():
        assert parse_symbol(f"{exchange}:ABC", "FX_IDC") == f"{exchange}:ABC"
        assert re.fullmatch(r"[a-z0-9]+", screener), screener


def test_the_default_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        SCREENERS["NEW"] = "forex"  # type: ignore[index]
