"""Minimal peer servers that ``bench.fanout`` measures quartsig against, in the same run.

- :mod:`bench.peers.quart_peer`: a bare Quart ``/ws`` route under the same Hypercorn config
  as ``quartsig serve``, sending one pre-encoded frame per connection (the ceiling of our stack).
- :mod:`bench.peers.websockets_peer`: the ``websockets`` library with its default settings
  (permessage-deflate on), sending each key's update as its own frame with
  ``websockets.broadcast()`` (what a straightforward Python server would do).

Both are driven over stdin/stdout (one JSON object per line) by the benchmark:
``{"op": "broadcast", ...}`` -> ``{"t0": ..., "frames": ..., "seconds": ...}``.
"""
