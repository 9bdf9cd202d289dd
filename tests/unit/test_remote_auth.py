"""The TCP listener's parts that need a clock or a fake key source: the refusal audit's bound, the
OIDC key cache (refresh on an unknown kid, at most once per interval), and which certificate name
is the person. The whole path over real TLS is tests/integration/test_server_tls.py."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.config import Oidc
from app.domain.errors import ConfigError, IdentityError
from app.server.oidc import OidcVerifier, _KeysUnavailable, file_fetch
from app.server.remote import RefusalLimiter
from app.server.tls import certificate_person

ISSUER = "https://idp.example.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ refusal audit bound
def test_one_event_per_address_per_window_and_the_rest_counted():
    clock = Clock()
    limiter = RefusalLimiter(window=10, budget=100, clock=clock)
    assert limiter.admit("10.0.0.1") == (0, 0)
    assert [limiter.admit("10.0.0.1") for _ in range(5)] == [None] * 5
    assert limiter.admit("10.0.0.2") == (0, 0)  # another address has its own window
    clock.now += 10
    assert limiter.admit("10.0.0.1") == (5, 0)  # the next window: one event, saying five were not written


def test_an_address_forgotten_leaves_its_count_to_the_next_event():
    clock = Clock()
    limiter = RefusalLimiter(window=10, budget=100, clock=clock)
    limiter.admit("10.0.0.1"), limiter.admit("10.0.0.1"), limiter.admit("10.0.0.1")
    clock.now += 20  # two windows later 10.0.0.1 is forgotten; its two go to whoever comes next
    assert limiter.admit("10.0.0.2") == (0, 2)
    assert "10.0.0.1" not in limiter._seen


def test_the_suppressed_count_rides_on_the_next_event_of_that_address():
    clock = Clock()
    limiter = RefusalLimiter(window=10, budget=100, clock=clock)  # its window: 1000-1010, then 1010-1020
    limiter.admit("10.0.0.9")
    clock.now = 1003
    assert limiter.admit("10.0.0.1") == (0, 0)
    clock.now = 1005
    assert (limiter.admit("10.0.0.1"), limiter.admit("10.0.0.1")) == (None, None)
    clock.now = 1013.5  # the address's own window (from 1003) is over: its next event says two were not written
    assert limiter.admit("10.0.0.1") == (2, 0)


def test_many_addresses_share_one_budget():
    clock = Clock()
    limiter = RefusalLimiter(window=10, budget=3, clock=clock)
    written = [limiter.admit(f"2001:db8::{i:x}") for i in range(50)]
    assert sum(w is not None for w in written) == 3
    clock.now += 10
    assert limiter.admit("2001:db8::ffff") == (0, 47)  # every dropped refusal is still counted


def test_the_addresses_remembered_are_bounded():
    clock = Clock()
    limiter = RefusalLimiter(window=10, budget=10_000, max_addresses=8, clock=clock)
    written = [limiter.admit(f"10.0.{i // 256}.{i % 256}") for i in range(1000)]
    assert sum(w is not None for w in written) == 8 and len(limiter._seen) == 8


# ------------------------------------------------------------------ OIDC key cache
def _jwks(*keys: tuple[str, ec.EllipticCurvePrivateKey]) -> bytes:
    out = []
    for kid, key in keys:
        out.append({**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())), "kid": kid, "alg": "ES256"})
    return json.dumps({"keys": out}).encode()


def _token(key, kid: str, **claims) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": "jit", "sub": "s-1", "preferred_username": "carol", "iat": now, "exp": now + 60,
            **claims}
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": kid})


class Source:
    def __init__(self, document: bytes) -> None:
        self.document, self.calls = document, 0

    def __call__(self) -> bytes:
        self.calls += 1
        if isinstance(self.document, Exception):
            raise self.document
        return self.document


OIDC = Oidc(issuer=ISSUER, audience="jit", jwks_url="https://idp.example.test/jwks")


def test_a_rotated_key_is_fetched_on_its_first_token_but_made_up_kids_fetch_once_per_interval():
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    source, clock = Source(_jwks(("k1", old))), Clock()
    verifier = OidcVerifier(OIDC, source, min_refresh=30, clock=clock)
    verifier.preload()
    assert verifier.principal(_token(old, "k1")).how == f"oidc:{ISSUER}/s-1"
    assert source.calls == 1
    source.document = _jwks(("k1", old), ("k2", new))  # the provider rotates
    clock.now += 5
    with pytest.raises(IdentityError, match="not among the provider's keys"):
        verifier.principal(_token(new, "k2"))  # too soon after the last fetch: not fetched again
    for i in range(100):
        with pytest.raises(IdentityError):
            verifier.principal(_token(new, f"made-up-{i}"))
    assert source.calls == 1
    clock.now += 30
    assert verifier.principal(_token(new, "k2")).person == "carol"
    assert source.calls == 2


def test_keys_that_cannot_be_refreshed_are_kept():
    key = ec.generate_private_key(ec.SECP256R1())
    source, clock = Source(_jwks(("k1", key))), Clock()
    verifier = OidcVerifier(OIDC, source, min_refresh=1, max_age=10, clock=clock)
    verifier.preload()
    source.document = _KeysUnavailable("HTTP 503")
    clock.now += 60  # stale: a refresh is tried, fails, and the old keys still verify
    assert verifier.principal(_token(key, "k1")).person == "carol"
    assert source.calls == 2


def test_a_symmetric_key_in_the_jwks_is_never_used(tmp_path):
    ec_key = ec.generate_private_key(ec.SECP256R1())
    doc = json.loads(_jwks(("k1", ec_key)))
    doc["keys"].append({"kty": "oct", "kid": "shared", "k": "c2VjcmV0", "alg": "HS256"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(doc))
    oidc = Oidc(issuer=ISSUER, audience="jit", jwks_file=str(path), algorithms=("ES256",))
    verifier = OidcVerifier(oidc, file_fetch(path))
    verifier.preload()
    assert set(verifier._keys) == {"k1"}


def test_an_unusable_jwks_file_stops_the_start(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    oidc = Oidc(issuer=ISSUER, audience="jit", jwks_file=str(path))
    with pytest.raises(ConfigError, match="server.oidc.jwks_file: no asymmetric signing key"):
        OidcVerifier(oidc, file_fetch(path)).preload()


def test_messages_carry_nothing_from_the_token():
    key = ec.generate_private_key(ec.SECP256R1())
    verifier = OidcVerifier(OIDC, Source(_jwks(("k1", key))))
    for token in (_token(key, "k1", preferred_username="Evil<script>"), _token(key, "kid-secret-xyz"),
                  _token(key, "k1", aud="aud-secret-xyz"), _token(key, "k1", iss="https://iss-secret-xyz")):
        with pytest.raises(IdentityError) as info:
            verifier.principal(token)
        assert not any(s in str(info.value) for s in ("Evil", "secret-xyz")), str(info.value)


# ------------------------------------------------------------------ which certificate name is the person
def _cert(cn: str | None, san: list[x509.GeneralName]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    now = datetime.now(timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1)))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(key, hashes.SHA256())


@pytest.mark.parametrize("identity, cn, san, person", [
    ("cn", "alice", [], "alice"),
    ("email", "ignored", [x509.RFC822Name("dave@example.org")], "dave"),
    ("dns", "ignored", [x509.DNSName("erin.people.example.org")], "erin"),
    ("uri", "ignored", [x509.UniformResourceIdentifier("spiffe://example.org/people/bob")], "bob"),
])
def test_the_configured_name_is_the_person(identity, cn, san, person):
    assert certificate_person(_cert(cn, san), identity) == person


@pytest.mark.parametrize("identity, cn, san, says", [
    ("cn", None, [], "exactly one common name"),
    ("email", "alice", [], "exactly one email SAN"),
    ("email", "alice", [x509.RFC822Name("a@x.org"), x509.RFC822Name("b@x.org")], "it has 2"),
    ("cn", "Alice Smith", [], "not an account name"),
    ("cn", "alice\n", [], "not an account name"),
    ("uri", "alice", [x509.UniformResourceIdentifier("spiffe://example.org")], "not an account name"),
])
def test_a_certificate_naming_nobody_usable_is_refused(identity, cn, san, says):
    with pytest.raises(IdentityError, match=says):
        certificate_person(_cert(cn, san), identity)
