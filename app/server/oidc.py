"""The caller named by an OIDC bearer token (``[server.oidc]``), verified with PyJWT.

A token counts when its header's ``alg`` is one of ``server.oidc.algorithms`` (asymmetric only:
the config refuses ``none`` and HS*), its signature verifies with the provider's key of its
``kid`` (and that key's type fits the algorithm), and it carries ``exp``, ``iat``, ``sub``, ``iss``
and ``aud`` with ``iss`` the configured issuer and ``aud`` the configured audience, within
``leeway``. The person is the ``username_claim``, which must be an account name
(``policies.names.PERSON``); ``how`` is ``oidc:ISSUER/SUBJECT``.

Every failure is an ``IdentityError`` with a fixed message: nothing from the token (claims, kid,
header) reaches a message, a log line or the audit, since whatever the token says is the
caller's own words until it verifies.

The keys (a JWKS) come from ``jwks_file`` or ``jwks_url`` and are cached. An unknown ``kid`` (the
provider rotated its keys) refreshes them, and so does age, but at most once per
``min_refresh`` seconds, so a flood of made-up kids costs the provider one fetch per interval;
a fetch is bounded in time and size. PyJWT's ``PyJWKClient`` refreshes on every unknown kid,
which is why the cache is ours and only the key parsing (``PyJWK``) is PyJWT's.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import jwt

from app.config import Oidc, check_trusted
from app.domain.errors import ConfigError, IdentityError
from app.server.auth import Principal
from policies.names import PERSON

log = logging.getLogger("jit.server.oidc")

MAX_JWKS_BYTES = 1 << 20
MAX_KEYS = 100
MAX_TOKEN = 16 * 1024
ASYMMETRIC_KTY = {"RSA", "EC", "OKP"}  # an "oct" (shared-secret) key is never a provider's signing key
_SUBJECT = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no spaces: it is written into every audit event


class _KeysUnavailable(Exception):
    """The JWKS could not be read or is not a usable key set; the message names no secret."""


def http_fetch(url: str, timeout: timedelta) -> Callable[[], bytes]:
    """A fetch of ``url`` with httpx: no redirects, ``timeout`` per call, at most ``MAX_JWKS_BYTES``."""
    import httpx  # the server's only HTTP client import; the CLI never loads this module

    def fetch() -> bytes:
        try:
            with httpx.stream("GET", url, timeout=timeout.total_seconds(), follow_redirects=False,
                              headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise _KeysUnavailable(f"HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise _KeysUnavailable(f"larger than {MAX_JWKS_BYTES} bytes")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise _KeysUnavailable(exc.__class__.__name__) from None
    return fetch


def file_fetch(path: Path) -> Callable[[], bytes]:
    def fetch() -> bytes:
        try:
            check_trusted(path, "server.oidc.jwks_file")  # the keys decide who may act: nobody else may change them
        except ConfigError as exc:
            raise _KeysUnavailable(exc.problems[0].removeprefix("server.oidc.jwks_file: ")) from None
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_JWKS_BYTES + 1)
        except OSError as exc:
            raise _KeysUnavailable(f"cannot read {path} ({exc.strerror})") from None
        if len(data) > MAX_JWKS_BYTES:
            raise _KeysUnavailable(f"{path} is larger than {MAX_JWKS_BYTES} bytes")
        return data
    return fetch


def parse_jwks(data: bytes) -> dict[str | None, dict[str, Any]]:
    """The signing keys of a JWKS document by kid (None for a key without one); asymmetric keys for
    signatures only."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise _KeysUnavailable("not JSON") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise _KeysUnavailable('not a JWKS document (no "keys" list)')
    out: dict[str | None, dict[str, Any]] = {}
    for jwk in keys[:MAX_KEYS]:
        if not isinstance(jwk, dict) or jwk.get("kty") not in ASYMMETRIC_KTY or jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid")
        if kid is None or isinstance(kid, str):
            out[kid] = jwk
    if not out:
        raise _KeysUnavailable("no asymmetric signing key in the JWKS")
    return out


class OidcVerifier:
    """Bearer tokens of one provider, verified (see the module doc). Thread-safe; ``principal`` may
    block on a key fetch (bounded by the timeout), so the server calls it off the event loop."""

    def __init__(self, oidc: Oidc, fetch: Callable[[], bytes], *, min_refresh: float = 30.0,
                 max_age: float = 3600.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not oidc.issuer:
            raise ConfigError("server.oidc", ["server.oidc.issuer: required for bearer tokens"])
        self.oidc = oidc
        self._fetch = fetch
        self._min_refresh, self._max_age, self._clock = min_refresh, max_age, clock
        self._lock = threading.Lock()
        self._keys: dict[str | None, dict[str, Any]] = {}
        self._parsed: dict[tuple[str | None, str], jwt.PyJWK] = {}
        self._loaded_at: float | None = None
        self._tried_at: float | None = None

    @classmethod
    def from_config(cls, oidc: Oidc, resolve: Callable[[str], Path], timeout: timedelta = timedelta(seconds=5)
                    ) -> "OidcVerifier":
        """``resolve`` turns the config's ``jwks_file`` into a path (``Config.path``)."""
        fetch = http_fetch(oidc.jwks_url, timeout) if oidc.jwks_url else file_fetch(resolve(oidc.jwks_file))
        return cls(oidc, fetch)

    def preload(self) -> None:
        """Read the keys now: a bad ``jwks_file`` stops the server from starting (``ConfigError``);
        an unreachable ``jwks_url`` is logged and fetched again when a token comes."""
        with self._lock:
            try:
                self._refresh()
            except _KeysUnavailable as exc:
                if not self.oidc.jwks_url:
                    raise ConfigError(self.oidc.jwks_file, [f"server.oidc.jwks_file: {exc}"]) from None
                log.warning("OIDC keys from %s not available yet: %s", self.oidc.jwks_url, exc)

    def principal(self, token: str) -> Principal:
        """The person the token names; ``IdentityError`` saying why not."""
        if len(token) > MAX_TOKEN:
            raise IdentityError("the bearer token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise IdentityError("the bearer token is not a well-formed JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.oidc.algorithms:
            raise IdentityError("the bearer token's algorithm is not accepted (server.oidc.algorithms)")
        if kid is not None and not isinstance(kid, str):
            raise IdentityError("the bearer token's key id (kid) is not text")
        key = self._key(kid, alg)
        claims = self._decode(token, key, alg)
        issuer, subject, person = claims["iss"], claims["sub"], claims.get(self.oidc.username_claim)
        if not isinstance(subject, str) or not _SUBJECT.fullmatch(subject):
            raise IdentityError("the bearer token's subject (sub) is not 1-255 printable characters")
        if not isinstance(person, str) or not re.fullmatch(PERSON, person):
            raise IdentityError(f"the bearer token's {self.oidc.username_claim} claim "
                                "(server.oidc.username_claim) is missing or not an account name")
        return Principal(person, f"oidc:{issuer}/{subject}")

    def _decode(self, token: str, key: jwt.PyJWK, alg: str) -> dict[str, Any]:
        o = self.oidc
        try:
            # key.key, the parsed public key: decode() takes a PyJWK only from PyJWT 2.9; that alg fits the key is
            # checked by _key (the JWK's own "alg", and PyJWK refusing a key of another type)
            return jwt.decode(token, key.key, algorithms=[alg], audience=o.audience, issuer=o.issuer,
                              leeway=o.leeway, options={"require": ["exp", "iat", "sub", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise IdentityError("the bearer token has expired") from None
        except jwt.ImmatureSignatureError:
            raise IdentityError("the bearer token is not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidIssuerError:
            raise IdentityError("the bearer token is from another issuer (server.oidc.issuer)") from None
        except jwt.InvalidAudienceError:
            raise IdentityError("the bearer token is for another audience (server.oidc.audience)") from None
        except jwt.MissingRequiredClaimError as exc:  # the claim's name is ours (the list above), not the token's
            raise IdentityError(f"the bearer token lacks the required {exc.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise IdentityError("the bearer token's signature does not verify") from None
        except jwt.InvalidAlgorithmError:
            raise IdentityError("the bearer token's algorithm does not fit its key") from None
        except jwt.InvalidKeyError:
            raise IdentityError("the bearer token's key is unusable for its algorithm") from None
        except jwt.PyJWTError:
            raise IdentityError("the bearer token is invalid") from None

    def _key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        with self._lock:
            now = self._clock()
            stale = self._loaded_at is None or now - self._loaded_at > self._max_age
            if (stale or kid not in self._keys) and (self._tried_at is None or now - self._tried_at >= self._min_refresh):
                try:
                    self._refresh()
                except _KeysUnavailable as exc:  # keep the keys we have; refuse only what they cannot verify
                    log.warning("OIDC keys from %s not refreshed: %s", self.oidc.jwks_url or self.oidc.jwks_file, exc)
            if not self._keys:
                raise IdentityError("the identity provider's keys are not available")
            if kid is None:
                if len(self._keys) != 1:
                    raise IdentityError("the bearer token names no key (kid) and the provider has several")
                kid = next(iter(self._keys))
            jwk = self._keys.get(kid)
            if jwk is None:
                raise IdentityError("the bearer token's key (kid) is not among the provider's keys")
            if jwk.get("alg", alg) != alg:
                raise IdentityError("the bearer token's algorithm does not fit its key")
            parsed = self._parsed.get((kid, alg))
            if parsed is None:
                try:
                    parsed = jwt.PyJWK(jwk, algorithm=alg)
                except jwt.PyJWTError:
                    raise IdentityError("the bearer token's key is unusable for its algorithm") from None
                self._parsed[(kid, alg)] = parsed
            return parsed

    def _refresh(self) -> None:
        """Under the lock: fetch and parse the keys; ``_KeysUnavailable`` leaves the old ones."""
        self._tried_at = self._clock()
        keys = parse_jwks(self._fetch())
        self._keys, self._parsed, self._loaded_at = keys, {}, self._tried_at
