"""The browser page: one HTML file with its script and style sheet, served at `GET /`.

The page contains no secrets, so it is served without an API key. The user types the key into
the page, which sends it as `access_token` on the requests that need one.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Only these files are served under /static/, so no other file of the package can be fetched.
STATIC_MEDIA_TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}

# The page runs only /static/app.js and no inline script or event handler attribute, so markup
# in job data could not run even if a bug put it into the DOM. media-src allows the blob: URLs
# that play audio chunks. In CSP Level 3, connect-src 'self' also allows ws: and wss: to the
# page's own host and port (Chromium and Firefox implement this).
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "media-src blob:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def index_page(request: Request) -> Response:
    return FileResponse(
        STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS
    )


async def static_file(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = STATIC_MEDIA_TYPES.get(name)
    if media_type is None:
        return JSONResponse({"error": f"no static file {name!r}"}, status_code=404)
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=HEADERS)


WEB_ROUTES = [
    Route("/", index_page),
    Route("/static/{name}", static_file),
]
