"""The demo market: a deterministic simulation of TradingView's indicator columns.

Values are a deterministic function of ``(seed, ticker, timeframe, step)``: a
random walk per ticker and timeframe drives the component indicators, and
``Rec.*`` and ``Recommend.*`` are derived from those (:func:`derive`), as
TradingView does. Values move only on :meth:`Market.step`, so repeated reads
between steps agree exactly.

:func:`derive` is a second encoding of the rating rules of
``shared/recommendation-rules.md``, on purpose: it plays TradingView's part
(producing ``Recommend.*`` from components), while :mod:`quartsig.domain.rules` plays
ours (reading them back as labels and actions). Sharing one encoding would make
a wrong rule agree with itself; see :mod:`quartsig.domain.rules` for the full list.

The HTTP scanner serving this market is :mod:`quartsig.demo.scanner`.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from quartsig.domain.columns import KNOWN_COLUMNS
from quartsig.domain.timeframes import SUFFIXES

#: Bar length in minutes, per timeframe (volatility grows with it).
_MINUTES = {
    "1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "2h": 120, "4h": 240,
    "1d": 1440, "1W": 10080, "1M": 43200,
}  # fmt: skip

_FOREX = (
    "EURUSD", "GBPUSD", "USDJPY", "USDCHF", "AUDUSD", "NZDUSD", "USDCAD", "EURGBP", "EURJPY",
    "GBPJPY", "EURCHF", "AUDJPY", "CADJPY", "CHFJPY", "EURAUD", "EURCAD", "EURNZD", "GBPAUD",
    "GBPCAD", "GBPCHF", "GBPNZD", "AUDCAD", "AUDCHF", "AUDNZD", "NZDJPY", "NZDCAD", "NZDCHF",
    "CADCHF", "USDSEK", "USDNOK", "USDMXN", "USDZAR", "USDTRY", "USDSGD", "USDHKD",
)  # fmt: skip
_BINANCE = (
    "BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "AVAXUSDT",
    "DOTUSDT", "LINKUSDT", "MATICUSDT", "LTCUSDT", "TRXUSDT", "ATOMUSDT", "UNIUSDT", "ETCUSDT",
    "XLMUSDT", "NEARUSDT", "APTUSDT", "ARBUSDT", "OPUSDT", "FILUSDT", "ICPUSDT", "SHIBUSDT",
    "PEPEUSDT", "TONUSDT", "SUIUSDT", "INJUSDT", "AAVEUSDT", "ETHBTC",
)  # fmt: skip
_NASDAQ = (
    "AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "GOOG", "META", "TSLA", "AVGO", "COST", "NFLX",
    "AMD", "PEP", "ADBE", "CSCO", "INTC", "QCOM", "TXN", "AMGN", "INTU", "SBUX", "PYPL", "ISRG",
    "BKNG", "GILD", "MDLZ", "ADP", "VRTX", "REGN", "MU", "LRCX", "PANW", "ABNB", "MRVL",
)  # fmt: skip
_NYSE = (
    "JPM", "V", "MA", "UNH", "JNJ", "XOM", "WMT", "PG", "HD", "KO", "BAC", "DIS", "MCD", "CVX",
    "PFE", "ABBV", "CRM", "ORCL", "NKE", "T", "IBM", "GE", "CAT", "BA", "GS",
)  # fmt: skip

DEFAULT_UNIVERSE: dict[str, tuple[str, ...]] = {
    "forex": tuple(f"FX_IDC:{t}" for t in _FOREX)
    + tuple(f"FX:{t}" for t in _FOREX[:20])
    + tuple(f"OANDA:{t}" for t in _FOREX[:20]),
    "crypto": tuple(f"BINANCE:{t}" for t in _BINANCE)
    + tuple(f"BITSTAMP:{t}" for t in ("BTCUSD", "ETHUSD", "XRPUSD", "LTCUSD", "BCHUSD"))
    + tuple(f"COINBASE:{t}" for t in ("BTCUSD", "ETHUSD", "SOLUSD", "ADAUSD", "DOGEUSD")),
    "america": tuple(f"NASDAQ:{t}" for t in _NASDAQ)
    + tuple(f"NYSE:{t}" for t in _NYSE)
    + tuple(f"AMEX:{t}" for t in ("SPY", "GLD", "IWM", "EEM")),
    "cfd": tuple(
        f"TVC:{t}"
        for t in ("GOLD", "SILVER", "USOIL", "UKOIL", "PLATINUM", "PALLADIUM", "DXY", "SPX",
                  "NDX", "DJI", "VIX", "US10Y")
    ),
}

#: Symbols TradingView has no technicals for: their ``Recommend.*`` are null.
NO_TECHNICALS = frozenset({"FX_IDC:USDHKD", "TVC:US10Y", "OANDA:CADCHF"})
#: Young listings: the long moving averages are null on weekly and monthly bars.
NEW_LISTINGS = frozenset({"BINANCE:SUIUSDT", "BINANCE:TONUSDT", "BINANCE:APTUSDT"})

_PRICES = {
    "EURUSD": 1.08, "GBPUSD": 1.27, "USDJPY": 150.0, "USDCHF": 0.88, "AUDUSD": 0.66,
    "NZDUSD": 0.61, "USDCAD": 1.36, "BTCUSDT": 65000.0, "BTCUSD": 65000.0, "ETHUSDT": 3200.0,
    "ETHUSD": 3200.0, "SOLUSDT": 150.0, "AAPL": 190.0, "MSFT": 420.0, "NVDA": 900.0,
    "GOLD": 2300.0, "SILVER": 27.0, "USOIL": 80.0, "UKOIL": 84.0, "SPX": 5200.0,
    "DJI": 39000.0, "NDX": 18000.0, "VIX": 14.0, "DXY": 104.0, "US10Y": 4.3,
}  # fmt: skip

_MA_PERIODS = (5, 10, 20, 30, 50, 100, 200)
_SYNTHETIC_STEMS = frozenset({"FXS", "CRS", "STK", "CFD"})


def synthetic_universe(
    n_forex: int = 0, n_crypto: int = 0, n_america: int = 0, n_cfd: int = 0
) -> dict[str, tuple[str, ...]]:
    """A large made-up universe for benchmarks: ``FX_IDC:SYN0001`` and friends.

    Every 50th symbol (``...49``, ``...99``) has no technicals, like a real long tail.
    """
    def names(prefix: str, stem: str, count: int) -> tuple[str, ...]:
        return tuple(f"{prefix}:{stem}{i:05d}" for i in range(count))

    universe = {
        "forex": names("FX_IDC", "FXS", n_forex),
        "crypto": names("BINANCE", "CRS", n_crypto),
        "america": names("NASDAQ", "STK", n_america),
        "cfd": names("TVC", "CFD", n_cfd),
    }
    return {screener: tickers for screener, tickers in universe.items() if tickers}


def _unit(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) from ``parts`` (independent of PYTHONHASHSEED)."""
    return zlib.crc32("|".join(map(str, parts)).encode()) / 2**32


def _base_price(ticker: str, screener: str) -> float:
    name = ticker.partition(":")[2]
    if name in _PRICES:
        return _PRICES[name]
    u = _unit("price", ticker)
    if screener == "forex":
        return 80 + 100 * u if name.endswith("JPY") else 0.5 + 1.5 * u
    if screener == "crypto":
        return 10 ** (-2 + 6 * u)
    return 5 + 500 * u


def _sigma(screener: str, timeframe: str) -> float:
    """Per-bar volatility: grows with the bar's length, crypto wilder than forex."""
    scale = {"forex": 0.5, "crypto": 2.5, "america": 1.2, "cfd": 1.0}.get(screener, 1.0)
    return 0.0006 * scale * math.pow(_MINUTES[timeframe], 0.4)


def _clamp(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


@dataclass(slots=True)
class _Series:
    """The latent state of one ticker on one timeframe: a random walk and smoothed views of it."""

    at: int
    base: float
    sigma: float
    close: float
    prev_close: float
    open: float
    high: float
    low: float
    volume: float
    ema: dict[int, float]
    sma: dict[int, float]
    ema12: float
    ema26: float
    signal: float
    hull: float
    hull_prev: float
    avg_gain: float
    avg_loss: float
    rsi: float
    rsi_prev: float
    k: float
    d: float
    k_prev: float
    d_prev: float
    cci: float
    cci_prev: float
    pdi: float
    mdi: float
    pdi_prev: float
    mdi_prev: float
    adx: float
    ao: float
    ao1: float
    ao2: float
    mom: float
    mom1: float
    srk: float
    srk_prev: float
    srd: float
    uo: float
    ret: float = 0.0


def _new_series(seed: int, ticker: str, screener: str, timeframe: str) -> _Series:
    rng = random.Random(f"{seed}|init|{ticker}|{timeframe}")
    sigma = _sigma(screener, timeframe)
    base = _base_price(ticker, screener)
    close = base * math.exp(rng.gauss(0, 4 * sigma))
    ema = {n: close * math.exp(rng.gauss(0, sigma * math.sqrt(n) / 2)) for n in _MA_PERIODS}
    sma = {n: ema[n] * math.exp(rng.gauss(0, sigma / 2)) for n in _MA_PERIODS}
    rsi = rng.uniform(25, 75)
    k = rng.uniform(5, 95)
    series = _Series(
        at=0, base=base, sigma=sigma, close=close, prev_close=close, open=close,
        high=close * (1 + sigma / 2), low=close * (1 - sigma / 2),
        volume=rng.lognormvariate(10, 1), ema=ema, sma=sma,
        ema12=ema[10], ema26=ema[30], signal=(ema[10] - ema[30]) * rng.uniform(0.5, 1.5),
        hull=close, hull_prev=close * math.exp(rng.gauss(0, sigma)),
        avg_gain=sigma * close, avg_loss=sigma * close,
        rsi=rsi, rsi_prev=rsi + rng.gauss(0, 3), k=k, d=k + rng.gauss(0, 5), k_prev=k,
        d_prev=k, cci=rng.uniform(-150, 150), cci_prev=rng.uniform(-150, 150),
        pdi=rng.uniform(10, 35), mdi=rng.uniform(10, 35), pdi_prev=rng.uniform(10, 35),
        mdi_prev=rng.uniform(10, 35), adx=rng.uniform(10, 45),
        ao=rng.gauss(0, sigma * close * 3), ao1=rng.gauss(0, sigma * close * 3),
        ao2=rng.gauss(0, sigma * close * 3), mom=rng.gauss(0, sigma * close * 3),
        mom1=rng.gauss(0, sigma * close * 3), srk=rng.uniform(0, 100),
        srk_prev=rng.uniform(0, 100), srd=50.0, uo=rng.uniform(30, 70),
    )  # fmt: skip
    # RSI's averages must agree with the RSI drawn above.
    series.avg_loss = series.avg_gain * (100 / rsi - 1)
    return series


def _advance(s: _Series, rng: random.Random) -> None:
    """One bar: the close walks (pulled gently home), every component follows."""
    sigma = s.sigma
    ret = rng.gauss(0, sigma) - 0.01 * math.log(s.close / s.base)
    s.ret = ret
    s.prev_close, s.close = s.close, s.close * math.exp(ret)
    s.open = s.prev_close
    s.high = max(s.open, s.close) * (1 + abs(rng.gauss(0, sigma / 2)))
    s.low = min(s.open, s.close) * (1 - abs(rng.gauss(0, sigma / 2)))
    s.volume = max(0.0, s.volume * math.exp(rng.gauss(0, 0.3)) * 0.9 + 0.1 * math.exp(10))
    close = s.close
    for n in _MA_PERIODS:
        s.ema[n] += (close - s.ema[n]) * 2 / (n + 1)
        s.sma[n] += (close - s.sma[n]) / n
    s.ema12 += (close - s.ema12) * 2 / 13
    s.ema26 += (close - s.ema26) * 2 / 27
    s.signal += ((s.ema12 - s.ema26) - s.signal) * 2 / 10
    s.hull_prev, s.hull = s.hull, s.hull + (close - s.hull) * 0.6
    change = close - s.prev_close
    s.avg_gain = (s.avg_gain * 13 + max(change, 0.0)) / 14
    s.avg_loss = (s.avg_loss * 13 + max(-change, 0.0)) / 14
    s.rsi_prev = s.rsi
    s.rsi = 100.0 if s.avg_loss == 0 else 100 - 100 / (1 + s.avg_gain / s.avg_loss)
    s.k_prev, s.d_prev = s.k, s.d
    drift = (close - s.ema[10]) / (close * sigma * 2)
    s.k = _clamp(0.6 * s.k + 0.4 * (50 + 50 * math.tanh(drift)) + rng.gauss(0, 6), 0, 100)
    s.d = (2 * s.d + s.k) / 3
    s.cci_prev = s.cci
    s.cci = _clamp((close - s.sma[20]) / (0.015 * close * sigma * 3), -400, 400)
    s.pdi_prev, s.mdi_prev = s.pdi, s.mdi
    s.pdi = _clamp(0.8 * s.pdi + 8 * max(ret, 0) / sigma + rng.gauss(0, 1.5), 1, 60)
    s.mdi = _clamp(0.8 * s.mdi + 8 * max(-ret, 0) / sigma + rng.gauss(0, 1.5), 1, 60)
    s.adx = _clamp(0.9 * s.adx + 10 * abs(s.pdi - s.mdi) / (s.pdi + s.mdi), 0, 100)
    s.ao2, s.ao1, s.ao = s.ao1, s.ao, s.sma[5] - s.sma[30]
    s.mom1, s.mom = s.mom, close - s.sma[10]
    s.srk_prev = s.srk
    s.srk = _clamp(0.5 * s.srk + 0.5 * (50 + 10 * (s.rsi - s.rsi_prev)) + rng.gauss(0, 8), 0, 100)
    s.srd = (2 * s.srd + s.srk) / 3
    s.uo = _clamp(0.7 * s.uo + 0.3 * (50 + 30 * math.tanh(drift)) + rng.gauss(0, 3), 0, 100)


def _components(s: _Series, ticker: str, screener: str, timeframe: str) -> dict[str, Any]:
    """Every base column except the derived ``Rec.*`` and ``Recommend.*``."""
    close, sigma = s.close, s.sigma
    wr = s.k - 100
    bbp = close - s.ema[10] * (1 + sigma / 4)
    band = 2 * close * sigma * math.sqrt(20) / 2
    values: dict[str, Any] = {
        "open": s.open, "high": s.high, "low": s.low, "close": close, "volume": s.volume,
        "change": (close / s.prev_close - 1) * 100,
        "RSI": s.rsi, "RSI[1]": s.rsi_prev, "RSI7": _clamp(50 + (s.rsi - 50) * 1.3, 0, 100),
        "Stoch.K": s.k, "Stoch.D": s.d, "Stoch.K[1]": s.k_prev, "Stoch.D[1]": s.d_prev,
        "CCI20": s.cci, "CCI20[1]": s.cci_prev, "ADX": s.adx, "ADX+DI": s.pdi, "ADX-DI": s.mdi,
        "ADX+DI[1]": s.pdi_prev, "ADX-DI[1]": s.mdi_prev, "AO": s.ao, "AO[1]": s.ao1,
        "AO[2]": s.ao2, "Mom": s.mom, "Mom[1]": s.mom1, "MACD.macd": s.ema12 - s.ema26,
        "MACD.signal": s.signal, "Stoch.RSI.K": s.srk, "Stoch.RSI.D": s.srd, "W.R": wr,
        "BBPower": bbp, "UO": s.uo, "HullMA9": s.hull, "VWMA": s.sma[20] * (1 + sigma / 8),
        "Ichimoku.BLine": (s.ema[20] + s.ema[50]) / 2,
        "P.SAR": close * (1 - 2 * sigma) if s.ema[10] < close else close * (1 + 2 * sigma),
        "BB.lower": s.sma[20] - band, "BB.upper": s.sma[20] + band,
        "ATR": (s.high - s.low) * 0.5 + close * sigma * 0.5, "Volatility.D": abs(s.ret) * 100,
        "description": ticker.partition(":")[2],
    }  # fmt: skip
    for n in _MA_PERIODS:
        values[f"EMA{n}"] = s.ema[n]
        values[f"SMA{n}"] = s.sma[n]
    values.update(_pivots(s.ema[200] * (1 + 3 * sigma), s.ema[200] * (1 - 3 * sigma), s.sma[50]))
    if screener == "forex":
        values["volume"] = values["VWMA"] = None
    if ticker in NEW_LISTINGS and timeframe in ("1W", "1M"):
        for name in ("EMA100", "SMA100", "EMA200", "SMA200"):
            values[name] = None
    # The previous bar's oscillators, kept for the Rec.* rules below.
    values["_srk_prev"], values["_uo_prev"] = s.srk_prev, s.uo
    values["_hull_prev"], values["_wr_prev"] = s.hull_prev, s.k_prev - 100
    return values


#: Helper values :func:`_components` passes to :func:`derive`, never served.
_PRIVATE = ("_srk_prev", "_uo_prev", "_hull_prev", "_wr_prev")


def _pivots(high: float, low: float, close: float) -> dict[str, float]:
    """Monthly pivot levels from a previous month's high, low and close."""
    p = (high + low + close) / 3
    r = high - low
    out: dict[str, float] = {}
    levels = {
        "Classic": (p, 2 * p - low, p + r, high + 2 * (p - low),
                    2 * p - high, p - r, low - 2 * (high - p)),
        "Fibonacci": (p, p + 0.382 * r, p + 0.618 * r, p + r, p - 0.382 * r, p - 0.618 * r, p - r),
        "Camarilla": (p, close + r * 1.1 / 12, close + r * 1.1 / 6, close + r * 1.1 / 4,
                      close - r * 1.1 / 12, close - r * 1.1 / 6, close - r * 1.1 / 4),
        "Woodie": ((high + low + 2 * close) / 4,) * 1
        + ((high + low + 2 * close) / 2 - low, (high + low + 2 * close) / 4 + r,
           high + 2 * ((high + low + 2 * close) / 4 - low),
           (high + low + 2 * close) / 2 - high, (high + low + 2 * close) / 4 - r,
           low - 2 * (high - (high + low + 2 * close) / 4)),
    }  # fmt: skip
    for kind, (middle, r1, r2, r3, s1, s2, s3) in levels.items():
        out.update({
            f"Pivot.M.{kind}.Middle": middle, f"Pivot.M.{kind}.R1": r1,
            f"Pivot.M.{kind}.R2": r2, f"Pivot.M.{kind}.R3": r3, f"Pivot.M.{kind}.S1": s1,
            f"Pivot.M.{kind}.S2": s2, f"Pivot.M.{kind}.S3": s3,
        })  # fmt: skip
    x = 2 * high + low + close if close < p else high + low + 2 * close
    out["Pivot.M.Demark.Middle"] = x / 4
    out["Pivot.M.Demark.R1"] = x / 2 - low
    out["Pivot.M.Demark.S1"] = x / 2 - high
    return out


def _present(values: Mapping[str, Any], *names: str) -> bool:
    # map(), not a generator: this is the hottest function in large benchmark scans.
    return None not in map(values.get, names)


def _rec_votes(v: dict[str, Any]) -> None:
    """``Rec.*`` columns: -1/0/+1 from their components (kept if already set, e.g. by a test)."""
    def setdefault(name: str, needs: tuple[str, ...], vote: Any) -> None:
        if name not in v:
            v[name] = vote() if _present(v, *needs) else None

    setdefault("Rec.Stoch.RSI", ("Stoch.RSI.K",), lambda: (
        1 if v["Stoch.RSI.K"] < 20 and v["Stoch.RSI.K"] > v["_srk_prev"]
        else -1 if v["Stoch.RSI.K"] > 80 and v["Stoch.RSI.K"] < v["_srk_prev"] else 0))
    setdefault("Rec.WR", ("W.R",), lambda: (
        1 if v["W.R"] < -80 and v["W.R"] > v["_wr_prev"]
        else -1 if v["W.R"] > -20 and v["W.R"] < v["_wr_prev"] else 0))
    setdefault("Rec.BBPower", ("BBPower",), lambda: (
        1 if v["BBPower"] < 0 and v["Stoch.K"] > v["Stoch.K[1]"]
        else -1 if v["BBPower"] > 0 and v["Stoch.K"] < v["Stoch.K[1]"] else 0))
    setdefault("Rec.UO", ("UO",), lambda: 1 if v["UO"] > 70 else -1 if v["UO"] < 30 else 0)
    setdefault("Rec.Ichimoku", ("Ichimoku.BLine", "close"), lambda: _sign(
        round(v["close"] - v["Ichimoku.BLine"], 12)))
    setdefault("Rec.VWMA", ("VWMA", "close"), lambda: _sign(v["close"] - v["VWMA"]))
    setdefault("Rec.HullMA9", ("HullMA9",), lambda: _sign(v["HullMA9"] - v["_hull_prev"]))


def _oscillator_votes(v: Mapping[str, Any]) -> list[int]:
    """The 11 oscillator votes, by the rules in recommendation-rules.md (null inputs skip)."""
    votes: list[int] = []

    def vote(needs: tuple[str, ...], buy: Any, sell: Any) -> None:
        if _present(v, *needs):
            votes.append(1 if buy() else -1 if sell() else 0)

    vote(("RSI", "RSI[1]"), lambda: v["RSI"] < 30 and v["RSI[1]"] < v["RSI"],
         lambda: v["RSI"] > 70 and v["RSI[1]"] > v["RSI"])
    k, d, k1, d1 = "Stoch.K", "Stoch.D", "Stoch.K[1]", "Stoch.D[1]"
    vote((k, d, k1, d1),
         lambda: v[k] < 20 and v[d] < 20 and v[k] > v[d] and v[k1] < v[d1],
         lambda: v[k] > 80 and v[d] > 80 and v[k] < v[d] and v[k1] > v[d1])
    vote(("CCI20", "CCI20[1]"), lambda: v["CCI20"] < -100 and v["CCI20"] > v["CCI20[1]"],
         lambda: v["CCI20"] > 100 and v["CCI20"] < v["CCI20[1]"])
    p, m, p1, m1 = "ADX+DI", "ADX-DI", "ADX+DI[1]", "ADX-DI[1]"
    vote(("ADX", p, m, p1, m1), lambda: v["ADX"] > 20 and v[p1] < v[m1] and v[p] > v[m],
         lambda: v["ADX"] > 20 and v[p1] > v[m1] and v[p] < v[m])
    a: Any = v.get("AO")  # read only when all three are present (vote's ``needs``)
    a1: Any = v.get("AO[1]")
    a2: Any = v.get("AO[2]")
    vote(("AO", "AO[1]", "AO[2]"),
         lambda: (a > 0 and a1 < 0) or (a > 0 and a1 > 0 and a > a1 and a2 > a1),
         lambda: (a < 0 and a1 > 0) or (a < 0 and a1 < 0 and a < a1 and a2 < a1))
    vote(("Mom", "Mom[1]"), lambda: v["Mom"] > v["Mom[1]"], lambda: v["Mom"] < v["Mom[1]"])
    vote(("MACD.macd", "MACD.signal"), lambda: v["MACD.macd"] > v["MACD.signal"],
         lambda: v["MACD.macd"] < v["MACD.signal"])
    for rec in ("Rec.Stoch.RSI", "Rec.WR", "Rec.BBPower", "Rec.UO"):
        vote((rec,), lambda rec=rec: v[rec] == 1, lambda rec=rec: v[rec] == -1)
    return votes


def _ma_votes(v: Mapping[str, Any]) -> list[int]:
    """The 15 moving-average votes: 12 averages against the close, and three Rec.* columns."""
    votes = [
        _sign(v["close"] - v[f"{kind}{n}"])
        for n in (10, 20, 30, 50, 100, 200)
        for kind in ("EMA", "SMA")
        if _present(v, "close", f"{kind}{n}")
    ]
    votes.extend(int(v[rec]) for rec in ("Rec.Ichimoku", "Rec.VWMA", "Rec.HullMA9")
                 if _present(v, rec))
    return votes


def derive(
    values: dict[str, Any], *, technicals: bool = True, overridden: Iterable[str] = ()
) -> dict[str, Any]:
    """Add ``Rec.*`` and ``Recommend.*`` to component values, as TradingView derives them.

    ``Recommend.MA`` is the mean of up to 15 votes, ``Recommend.Other`` of up to
    11, ``Recommend.All`` the mean of the two; symbols without technicals get null.
    """
    keep = set(overridden)
    for name in ("Recommend.MA", "Recommend.Other", "Recommend.All"):
        if name not in keep:
            values.pop(name, None)
    _rec_votes(values)
    if not technicals:
        ratings: dict[str, float | None] = dict.fromkeys(
            ("Recommend.MA", "Recommend.Other", "Recommend.All")
        )
    else:
        ma, other = _ma_votes(values), _oscillator_votes(values)
        ma_mean = sum(ma) / len(ma) if ma else None
        other_mean = sum(other) / len(other) if other else None
        both = None if ma_mean is None or other_mean is None else (ma_mean + other_mean) / 2
        ratings = {"Recommend.MA": ma_mean, "Recommend.Other": other_mean, "Recommend.All": both}
    for name, value in ratings.items():
        values.setdefault(name, value)
    for name in _PRIVATE:
        values.pop(name, None)
    return values


def _lacks_technicals(ticker: str) -> bool:
    """Listed in :data:`NO_TECHNICALS`, or every 50th symbol of a synthetic universe."""
    name = ticker.partition(":")[2]
    synthetic = name[:3] in _SYNTHETIC_STEMS and name[3:].isdigit()
    return ticker in NO_TECHNICALS or (synthetic and int(name[3:]) % 50 == 49)



class Market:
    """Every ticker of a universe on every timeframe, stepping together. Pure, in-process."""

    def __init__(
        self, *, seed: int = 0, universe: Mapping[str, Iterable[str]] | None = None
    ) -> None:
        self.seed = seed
        source = DEFAULT_UNIVERSE if universe is None else universe
        self.universe: dict[str, frozenset[str]] = {
            screener: frozenset(tickers) for screener, tickers in source.items()
        }
        self.step_count = 0
        self._shares: list[float] = [0.0]  # change_share in force at each step
        self._series: dict[tuple[str, str], _Series] = {}
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}
        self._overrides: dict[tuple[str, str], dict[str, Any]] = {}
        self._screener_of: dict[str, str] = {
            ticker: screener for screener, tickers in self.universe.items() for ticker in tickers
        }

    def step(self, count: int = 1, change_share: float = 0.3) -> int:
        """Advance every series by ``count`` bars, each cell moving with probability
        ``change_share``; returns the new step number."""
        for _ in range(count):
            self.step_count += 1
            self._shares.append(change_share)
        self._cache.clear()
        return self.step_count

    def values(self, ticker: str, timeframe: str) -> dict[str, Any]:
        """Every known base column's value for ``ticker`` on ``timeframe`` at the current step."""
        key = (ticker, timeframe)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        screener = self._screener_of.get(ticker, "forex")
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _new_series(self.seed, ticker, screener, timeframe)
        while series.at < self.step_count:
            series.at += 1
            rng = random.Random(f"{self.seed}|{ticker}|{timeframe}|{series.at}")
            if rng.random() < self._shares[series.at]:
                _advance(series, rng)
        values = _components(series, ticker, screener, timeframe)
        overrides = self._overrides.get(key, {})
        values.update(overrides)
        values = derive(values, technicals=not _lacks_technicals(ticker), overridden=overrides)
        self._cache[key] = values
        return values

    def set_values(self, ticker: str, timeframe: str, values: Mapping[str, Any]) -> None:
        """Pin base columns of one ticker/timeframe (until :meth:`clear_values`).

        Pinned components feed the derived ``Rec.*``/``Recommend.*`` unless
        those are pinned too.
        """
        if timeframe not in SUFFIXES:
            raise ValueError(f"unknown timeframe {timeframe!r}")
        unknown = set(values) - KNOWN_COLUMNS
        if unknown:
            raise ValueError(f"unknown column(s): {sorted(unknown)}")
        self._overrides.setdefault((ticker, timeframe), {}).update(values)
        self._cache.pop((ticker, timeframe), None)

    def clear_values(self) -> None:
        self._overrides.clear()
        self._cache.clear()
