"""The operator console at /console: a live page of the service's clients, behind an admin key.

It lives in `mea serve` itself rather than in a separate process: it shares the server's port,
TLS and keys, and since every number it shows is read from the service database, any of the
server's processes (`--workers`) answers it with the same view.

- Log in with an administrator's key (`mea keys create --admin`); the server answers with a
  session cookie (HttpOnly, SameSite=Strict, Secure over HTTPS) holding a random token stored
  hashed, valid for `SESSION_S`.  Inference keys never open the console; admin keys never run
  inference.
- The page polls /console/api/overview every few seconds (no reload) and draws the selected
  client's per-minute series with uPlot, served from the package (no CDN).
- Actions (revoke, suspend, lift, quota) are POSTs carrying the session's CSRF token in a header;
  each is recorded in the audit log with the administrator's key id.
- Nothing on the page or in its API shows a key, a secret or an input image; responses carry a
  Content-Security-Policy that allows only the server's own scripts.
"""

from __future__ import annotations

import hmac
import secrets
import tempfile
import time
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from mea.errors import ArtifactError, ConfigError
from mea.serve import operations
from mea.serve.db import Database
from mea.serve.keys import ApiKey, KeyStore, token_digest

COOKIE = "mea_console"
CSRF_HEADER = "X-CSRF-Token"
SESSION_S = 12 * 3600.0
STATIC = Path(str(resources.files("mea.serve") / "static"))
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Sessions:
    """Console sessions in the service database (so every server process knows them)."""

    def __init__(self, db: Database, keys: KeyStore) -> None:
        self.db = db
        self.keys = keys

    def open(self, key: ApiKey) -> tuple[str, str]:
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = time.time()
        with self.db.write() as connection:
            connection.execute("DELETE FROM console_sessions WHERE expires < ?", (now,))
            connection.execute(
                "INSERT INTO console_sessions (digest, key_id, csrf, expires) VALUES (?, ?, ?, ?)",
                (token_digest(token), key.id, csrf, now + SESSION_S),
            )
        return token, csrf

    def find(self, token: str | None) -> tuple[ApiKey, str] | None:
        """The admin key and CSRF token of a live session (the key still valid and not revoked)."""
        if not token:
            return None
        row = (
            self.db.read()
            .execute("SELECT key_id, csrf, expires FROM console_sessions WHERE digest = ?", (token_digest(token),))
            .fetchone()
        )
        if row is None or row[2] < time.time():
            return None
        key = self.keys.find(row[0])
        if key is None or key.revoked or not key.admin:
            return None
        return key, row[1]

    def close(self, token: str) -> None:
        with self.db.write() as connection:
            connection.execute("DELETE FROM console_sessions WHERE digest = ?", (token_digest(token),))


def console_router(db: Database, keys: KeyStore, prada, token_of) -> APIRouter:
    """The console's routes; `token_of(request)` reads an API key from a request's headers."""
    router = APIRouter()
    sessions = Sessions(db, keys)

    def page(name: str, replacements: dict[str, str] | None = None, status: int = 200) -> HTMLResponse:
        text = (STATIC / name).read_text()
        for placeholder, value in (replacements or {}).items():
            text = text.replace(placeholder, value)
        return HTMLResponse(text, status_code=status, headers=_SECURITY_HEADERS)

    def admin_of(request: Request) -> tuple[ApiKey, str | None] | None:
        """(admin key, CSRF token or None for a bearer request) of a request, if it has the right."""
        found = sessions.find(request.cookies.get(COOKIE))
        if found is not None:
            return found
        key = keys.authenticate(token_of(request))
        return (key, None) if key is not None and key.admin else None

    def denied() -> JSONResponse:
        return JSONResponse(
            {"error": "the console needs an administrator's key (`mea keys create --admin`); log in at /console"},
            status_code=401,
            headers=_SECURITY_HEADERS,
        )

    @router.get("/console", include_in_schema=False)
    def console(request: Request) -> HTMLResponse:
        found = sessions.find(request.cookies.get(COOKIE))
        if found is None:
            return page("login.html", {"{{message}}": ""})
        key, csrf = found
        return page("console.html", {"{{csrf}}": csrf, "{{admin}}": key.id})

    @router.post("/console/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        fields = parse_qs((await request.body()).decode(errors="replace"))
        key = await run_in_threadpool(keys.authenticate, (fields.get("key") or [""])[0].strip())
        if key is None or not key.admin:
            message = "That is not a valid administrator's key (create one with: mea keys create --admin)."
            return page("login.html", {"{{message}}": message}, status=401)
        token, _ = await run_in_threadpool(sessions.open, key)
        response = RedirectResponse("/console", status_code=303, headers=_SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            token,
            max_age=int(SESSION_S),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/console",
        )
        return response

    @router.post("/console/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        found = sessions.find(request.cookies.get(COOKIE))
        if found is None or not hmac.compare_digest(found[1], request.headers.get(CSRF_HEADER, "")):
            return denied()
        sessions.close(request.cookies[COOKIE])
        response = JSONResponse({"logged_out": True}, headers=_SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path="/console")
        return response

    @router.get("/console/api/overview", include_in_schema=False)
    def overview(request: Request) -> JSONResponse:
        if admin_of(request) is None:
            return denied()
        return JSONResponse(operations.overview(db, prada), headers=_SECURITY_HEADERS)

    @router.get("/console/api/clients/{key_id}/series", include_in_schema=False)
    def series(key_id: str, request: Request) -> JSONResponse:
        if admin_of(request) is None:
            return denied()
        return JSONResponse(operations.series(db, key_id), headers=_SECURITY_HEADERS)

    @router.get("/console/api/evidence", include_in_schema=False)
    def evidence(request: Request) -> Response:
        """The watermark evidence of every client, as one export for `mea verify --evidence FILE
        [--client ID]` (the hash chain covers all clients' records together)."""
        if admin_of(request) is None:
            return denied()
        from mea.ownership.evidence import EvidenceError, export_evidence

        with tempfile.TemporaryDirectory(prefix="mea-evidence-") as scratch:
            out = Path(scratch) / "evidence.safetensors"
            try:
                export_evidence(db.path, out)
            except (EvidenceError, ArtifactError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=404, headers=_SECURITY_HEADERS)
            content = out.read_bytes()
        headers = {**_SECURITY_HEADERS, "Content-Disposition": 'attachment; filename="evidence.safetensors"'}
        return Response(content, media_type="application/octet-stream", headers=headers)

    @router.post("/console/api/clients/{key_id}/{action}", include_in_schema=False)
    async def act(key_id: str, action: str, request: Request) -> JSONResponse:
        found = await run_in_threadpool(sessions.find, request.cookies.get(COOKIE))
        if found is None:
            return denied()
        admin, csrf = found
        if not hmac.compare_digest(csrf, request.headers.get(CSRF_HEADER, "")):
            return JSONResponse(
                {"error": f"missing or wrong {CSRF_HEADER}; reload the console"},
                status_code=403,
                headers=_SECURITY_HEADERS,
            )
        quota = None
        if action == "quota":
            try:
                document = await request.json()
                quota = document.get("quota")
                if quota is not None and (not isinstance(quota, int) or isinstance(quota, bool)):
                    raise ValueError
            except (ValueError, AttributeError):
                return JSONResponse(
                    {"error": 'send {"quota": N} (a whole number of images) or {"quota": null} for none'},
                    status_code=400,
                    headers=_SECURITY_HEADERS,
                )
        try:
            detail = await run_in_threadpool(operations.act, db, admin.id, key_id, action, quota)
        except operations.UnknownClient as exc:
            return JSONResponse({"error": str(exc)}, status_code=404, headers=_SECURITY_HEADERS)
        except ConfigError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400, headers=_SECURITY_HEADERS)
        return JSONResponse({"client": key_id, "action": action, "detail": detail}, headers=_SECURITY_HEADERS)

    return router


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)
