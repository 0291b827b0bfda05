"""quartsig: real-time TradingView technical-analysis signals over WebSocket."""

__version__ = "0.1.0"
