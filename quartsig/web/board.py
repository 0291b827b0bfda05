"""The browser board: ``GET /`` and its static files under ``/board/``.

Plain HTML, CSS and ES modules shipped inside the package (``quartsig/web/board/``):
no build step and nothing fetched from elsewhere, so the Content-Security-Policy
can allow only this origin, its WebSocket included. The token travels in the URL
fragment, which browsers never send, and the page moves it to sessionStorage.

The files are the blueprint's static folder, served by Quart (safe joins, ETags,
conditional requests); this module adds the security headers and
``Cache-Control: no-cache``, which makes browsers revalidate, so a new release shows
at once and costs a 304 otherwise.
"""

from __future__ import annotations

from pathlib import Path

from quart import Blueprint, Response

BOARD_DIR = Path(__file__).resolve().parent / "board"

#: Types by suffix, so that a module script is ``text/javascript`` whatever the host's
#: ``mimetypes`` table says (Python 3.11 says ``application/javascript``).
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
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

blueprint = Blueprint("board", __name__, static_folder="board", static_url_path="/board")


@blueprint.get("/")
async def index() -> Response:
    return await blueprint.send_static_file("index.html")


@blueprint.after_request
async def _headers(response: Response) -> Response:
    from quart import request

    if response.status_code == 200:
        suffix = Path(request.path).suffix.lower() or ".html"
        if suffix in CONTENT_TYPES:
            response.headers["Content-Type"] = CONTENT_TYPES[suffix]
    for header, value in SECURITY_HEADERS.items():
        response.headers[header] = value
    return response
