"""Declining permessage-deflate, which Hypercorn accepts whenever a browser offers it.

Compression costs ~100 KiB of zlib state per connection, multiplies the cost of
each send by 2-3, inflates client frames with no output cap (a decompression
bomb), and defeats encode-once fan-out since every connection compresses the
same text again. quartsig's frames are small, so it declines. Hypercorn 0.18
builds ``[PerMessageDeflate()]`` inside ``Handshake.accept`` with no setting, so
the extension class it looks up there is replaced by one that declines every
offer; a client that then sends a compressed (RSV1) frame is a protocol error.
"""

from __future__ import annotations

from hypercorn.protocol import ws_stream
from wsproto.extensions import Extension, PerMessageDeflate


class DeclinedDeflate(Extension):
    """An extension named permessage-deflate whose ``accept`` declines every offer."""

    name = PerMessageDeflate.name

    def offer(self) -> bool:
        return False

    def accept(self, offer: str) -> None:
        return None

    def enabled(self) -> bool:
        return False


def decline_permessage_deflate() -> None:
    """Make this process's Hypercorn refuse permessage-deflate. Idempotent."""
    ws_stream.PerMessageDeflate = DeclinedDeflate  # type: ignore[misc,assignment]


def restore_permessage_deflate() -> None:
    ws_stream.PerMessageDeflate = PerMessageDeflate  # type: ignore[misc]
