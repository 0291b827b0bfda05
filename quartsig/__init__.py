"""quartsig: real-time TradingView technical-analysis signals over WebSocket.

The public surface for plugin authors: ``hookimpl`` and ``Profile`` (see docs/plugins.md).
The app itself is ``quartsig.app:create_app``.
"""

from quartsig.plugins.hookspecs import hookimpl
from quartsig.plugins.profiles import Profile

__version__ = "0.1.0"
__all__ = ["Profile", "__version__", "hookimpl"]
