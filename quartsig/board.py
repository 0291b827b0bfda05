"""The browser board: ``GET /`` and its static files under ``/board/``.

Plain HTML, CSS and ES modules shipped inside the package (``quartsig/board/``):
no build step and nothing fetched from elsewhere, so the Content-Security-Policy
can allow only this origin, its WebSocket included. The token travels in the URL
fragment, which browsers never send, and the page moves it to sessionStorage.

Files are read once and kept with a strong ETag; ``Cache-Control: no-cache``
makes browsers revalidate, so a new release shows at once and costs a 304
otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

from quart import Blueprint, Response, request

BOARD_DIR = Path(__file__).resolve().parent / "board"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",  # CSP 3: 'self' covers ws:// and wss:// of this host
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}

blueprint = Blueprint("board", __name__)


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str
    mtime_ns: int


_cache: dict[Path, Asset] = {}


def resolve(name: str) -> Path | None:
    """The file ``name`` names in :data:`BOARD_DIR`, or None (traversal, hidden, unknown type)."""
    parts = name.split("/")
    if not name or any(not part or part.startswith(".") for part in parts):
        return None
    if "\\" in name or "\x00" in name:
        return None
    path = (BOARD_DIR / name).resolve()
    if not path.is_relative_to(BOARD_DIR) or path.suffix.lower() not in CONTENT_TYPES:
        return None
    return path


def load(path: Path) -> Asset | None:
    """Read ``path`` (cached until its mtime changes); None when it is not a file."""
    try:
        stat = path.stat()
    except OSError:
        return None
    if not path.is_file():
        return None
    cached = _cache.get(path)
    if cached is not None and cached.mtime_ns == stat.st_mtime_ns:
        return cached
    body = path.read_bytes()
    asset = Asset(
        body=body,
        content_type=CONTENT_TYPES[path.suffix.lower()],
        etag=hashlib.sha256(body).hexdigest()[:32],
        mtime_ns=stat.st_mtime_ns,
    )
    _cache[path] = asset
    return asset


async def _serve(name: str) -> Response:
    path = resolve(name)
    asset = await asyncio.to_thread(load, path) if path is not None else None
    if asset is None:
        response = Response("not found\n", status=404, content_type="text/plain; charset=utf-8")
    elif asset.etag in request.if_none_match:
        response = Response(b"", status=304)
        response.set_etag(asset.etag)
    else:
        response = Response(asset.body, content_type=asset.content_type)
        response.set_etag(asset.etag)
    for header, value in SECURITY_HEADERS.items():
        response.headers[header] = value
    return response


@blueprint.get("/")
async def index() -> Response:
    return await _serve("index.html")


@blueprint.get("/board/<path:name>")
async def asset(name: str) -> Response:
    return await _serve(name)
