"""Who may call what: API keys (header X-API-Key) for write and admin endpoints, and for
reads too with FMREC_PROTECT_READS=true.

* No key sent: 401. A key that matches none of FMREC_API_KEYS: 403.
* FMREC_API_KEYS empty: every endpoint that needs a key is refused (403 "no API keys
  configured"), because an unset variable must not leave writes open to anyone who can
  reach the port. FMREC_ALLOW_UNAUTHENTICATED_WRITES=true opens them on purpose (what
  `fmrec demo` does when it listens on a loopback address only).
* The sent key is compared with every configured key by `hmac.compare_digest` (constant
  time; no early exit at the first match), as bytes: a header with non-ASCII bytes is
  just a wrong key, not an error.
* Keys are never logged: a refusal logs the route, the client address and the reason.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import Annotated, NoReturn

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from app.settings import Settings

log = logging.getLogger("fmrec")

API_KEY_HEADER = "X-API-Key"
NO_KEYS = ("no API keys configured: set FMREC_API_KEYS (or "
           "FMREC_ALLOW_UNAUTHENTICATED_WRITES=true on a trusted host)")

api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, scheme_name="ApiKey",
    description="One of FMREC_API_KEYS. Needed by /ratings and /admin/*, and by the read "
                "endpoints only when FMREC_PROTECT_READS=true.")


def key_matches(given: str, keys: frozenset[str]) -> bool:
    """True if `given` equals one of `keys`; every key is compared, each in constant time.

    Header values arrive decoded as latin-1, so encoding them back gives the bytes sent.
    """
    sent = given.encode("latin-1", errors="replace")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(sent, key.encode("utf-8"))
    return matched


def permits(settings: Settings, key: str | None) -> bool:
    """Whether `key` may call an endpoint that needs one (`authorize` says why not)."""
    if not settings.keys:
        return settings.allow_unauthenticated_writes
    return key is not None and key != "" and key_matches(key, settings.keys)


def may_read(settings: Settings, key: str | None) -> bool:
    """The read-key rule, for both doors: read endpoints need a key only with
    FMREC_PROTECT_READS=true (`require_read_key` says why not)."""
    return not settings.protect_reads or permits(settings, key)


def authorize(request: Request, settings: Settings, key: str | None) -> None:
    """Raise 401/403 unless `key` may call this endpoint (one that needs a key)."""
    if permits(settings, key):
        return
    if not settings.keys:
        _refuse(request, 403, NO_KEYS)
    if not key:
        _refuse(request, 401, f"missing {API_KEY_HEADER} header: this endpoint needs an "
                "API key")
    _refuse(request, 403, f"wrong API key in {API_KEY_HEADER}")


def _refuse(request: Request, status: int, reason: str) -> NoReturn:
    client = request.client.host if request.client is not None else "?"
    log.warning("refused %s %s from %s: %s", request.method, request.url.path, client,
                reason)
    headers = {"WWW-Authenticate": API_KEY_HEADER} if status == 401 else None
    raise HTTPException(status, reason, headers=headers)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.service.settings
    return settings


KeyHeader = Annotated[str | None, Security(api_key_header)]


async def require_write_key(request: Request, key: KeyHeader) -> None:
    """Write and admin endpoints: always need a key."""
    authorize(request, _settings(request), key)


async def require_read_key(request: Request, key: KeyHeader) -> None:
    """Read endpoints: need a key only with FMREC_PROTECT_READS=true (`may_read`)."""
    settings = _settings(request)
    if not may_read(settings, key):
        authorize(request, settings, key)


def demo_opens_writes(settings: Settings) -> bool:
    """`fmrec demo` opens writes without a key only when nothing decided otherwise: no keys,
    the flag not set, and a loopback listen address (nobody else can reach the port)."""
    if settings.keys or "allow_unauthenticated_writes" in settings.model_fields_set:
        return False
    host = settings.host.strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
