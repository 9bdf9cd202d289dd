"""`jit server` on TCP with TLS (``[server] listen``): the caller proven by a client certificate
from ``client_ca`` or by an OIDC bearer token, anything else 401 and audited with the address.

Every key and certificate is made here with ``cryptography``; the provider's JWKS is served by an
``http.server`` thread on 127.0.0.1; the real server runs in this process (``serve()`` in a
thread, services built from a sandbox) and is called with httpx over real TLS.
"""
from __future__ import annotations

import base64
import hashlib
import io
import hmac
import json
import shutil
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlmodel import select

from app.bootstrap import build
from app.config import load_config
from app.dev.sandbox import write_sandbox
from app.domain.errors import ConfigError
from app.server.run import serve
from app.store import AuditEvent

ISSUER = "https://idp.example.test/realms/ops"
AUDIENCE = "jit-server"
NOW = datetime.now(timezone.utc)


# ------------------------------------------------------------------ keys and certificates
@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _write(issued_cert: x509.Certificate, key, where: Path, name: str) -> Issued:
    cert_path, key_path = where / f"{name}.pem", where / f"{name}.key"
    cert_path.write_bytes(issued_cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return Issued(issued_cert, key, cert_path, key_path)


def make_ca(where: Path, name: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=30)).not_valid_after(NOW + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return _write(cert, key, where, name)


def issue(ca: Issued, where: Path, name: str, *, cn: str, server: bool = False, san: list[x509.GeneralName] | None = None,
          valid: tuple[datetime, datetime] = (NOW - timedelta(days=1), NOW + timedelta(days=1))) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(valid[0]).not_valid_after(valid[1])
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return _write(builder.sign(ca.key, hashes.SHA256()), key, where, name)


@dataclass
class Pki:
    ca: Issued
    server: Issued
    alice: Issued
    stranger: Issued  # CN=alice, but from another CA
    expired: Issued   # CN=alice, from the right CA, expired yesterday


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    where = tmp_path_factory.mktemp("pki")
    ca, other = make_ca(where, "jit"), make_ca(where, "other")
    import ipaddress
    return Pki(
        ca=ca,
        server=issue(ca, where, "server", cn="jit-server", server=True,
                     san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
        alice=issue(ca, where, "alice", cn="alice"),
        stranger=issue(other, where, "stranger", cn="alice"),
        expired=issue(ca, where, "expired", cn="alice", valid=(NOW - timedelta(days=10), NOW - timedelta(days=1))))


# ------------------------------------------------------------------ the identity provider's keys
@dataclass
class Idp:
    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    url: str
    hits: list[str]

    def token(self, *, alg: str = "RS256", kid: str | None = "rsa-1", key=None, **claims) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "00u-bob-42", "preferred_username": "bob",
                "iat": now, "exp": now + 300}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        key = key if key is not None else (self.rsa if alg.startswith(("RS", "PS")) else self.ec)
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


def _jwk(public, kid: str, alg: str) -> dict:
    return {**json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(public)), "kid": kid, "alg": alg,
            "use": "sig"}


@pytest.fixture(scope="module")
def idp() -> Idp:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    document = json.dumps({"keys": [_jwk(rsa_key.public_key(), "rsa-1", "RS256"),
                                    _jwk(ec_key.public_key(), "ec-1", "ES256")]}).encode()
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            hits.append(self.path)
            self.send_response(200 if self.path == "/jwks.json" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(document if self.path == "/jwks.json" else b"{}")

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield Idp(rsa_key, ec_key, f"http://127.0.0.1:{httpd.server_address[1]}/jwks.json", hits)
    httpd.shutdown()
    thread.join(10)


# ------------------------------------------------------------------ the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    sv: object
    base: str
    sock: Path


def _server_toml(pki: Pki, port: int, idp: Idp | None, *, client_ca: bool = True, agent_ca: Path | None = None) -> str:
    text = (f'\n[server]\nlisten = "127.0.0.1:{port}"\ntls_cert = "{pki.server.cert_path}"\n'
            f'tls_key = "{pki.server.key_path}"\n' + (f'client_ca = "{pki.ca.cert_path}"\n' if client_ca else "")
            + (f'agent_ca = "{agent_ca}"\n' if agent_ca else ""))
    if idp is not None:
        text += f'\n[server.oidc]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\njwks_url = "{idp.url}"\n'
    return text


def sandbox(where: Path) -> Path:
    """A sandbox whose [server] table the test writes itself."""
    config = write_sandbox(where, servicenow_url=None)
    text = config.read_text()
    start = text.index("[server]\n")
    config.write_text(text[:start] + text[text.index("[client]"):])
    return config


def start_server(where: Path, pki: Pki, idp: Idp, *, client_ca: bool = True, agent_ca: Path | None = None):
    config = sandbox(where / "sb")
    port = free_port()
    with open(config, "a") as handle:
        handle.write(_server_toml(pki, port, idp, client_ca=client_ca, agent_ca=agent_ca))
    sv = build(load_config(config))
    run_dir = Path(tempfile.mkdtemp(prefix="jit-tls-", dir="/tmp"))  # a short path: sun_path is 108 bytes
    sock = run_dir / "jit.sock"
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=serve, args=(sv, sock, stop), kwargs={"ready": ready.set}, daemon=True)
    thread.start()
    assert ready.wait(30), "the server did not start listening"

    def finish() -> None:
        stop.set()
        thread.join(30)
        sv.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    return Running(sv, f"https://127.0.0.1:{port}", sock), finish


@pytest.fixture(scope="module")
def server(tmp_path_factory, pki, idp):
    running, finish = start_server(tmp_path_factory.mktemp("srv"), pki, idp)
    yield running
    finish()


def tls_client(base: str, pki: Pki, cert: Issued | None = None, *, source: str | None = None,
               version: ssl.TLSVersion | None = None) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert_path))  # the client checks the server too
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if cert is not None:
        ctx.load_cert_chain(cert.cert_path, cert.key_path)
    transport = httpx.HTTPTransport(verify=ctx, local_address=source) if source else httpx.HTTPTransport(verify=ctx)
    return httpx.Client(base_url=base, transport=transport, timeout=10)


def whoami(server: Running, pki: Pki, cert: Issued | None = None, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    with tls_client(server.base, pki, cert) as c:
        return c.get("/v1/whoami", headers=headers)


def refused_401(response: httpx.Response, says: str) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["rule"] == "identity" and error["field"] is None
    assert says in error["message"], error["message"]


def refusals(sv) -> list[dict]:
    with sv.store.transaction() as s:
        rows = s.exec(select(AuditEvent).where(AuditEvent.action == "auth.refused").order_by(AuditEvent.seq)).all()
    return [{"actor": r.actor, **json.loads(r.details)} for r in rows]


# ------------------------------------------------------------------ client certificates
def test_a_certificate_from_client_ca_names_its_cn(server, pki):
    answer = whoami(server, pki, pki.alice)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["person"], body["authenticated_by"]) == ("alice", f"cert:{pki.alice.fingerprint}")


def test_a_certificate_wins_over_a_bearer_token_for_someone_else(server, pki, idp):
    body = whoami(server, pki, pki.alice, token=idp.token()).json()  # the token would be bob
    assert (body["person"], body["authenticated_by"]) == ("alice", f"cert:{pki.alice.fingerprint}")


# With CERT_OPTIONAL, OpenSSL verifies a certificate the client does present during the handshake:
# one from another CA, or an expired one, fails the handshake, so no HTTP request is ever read (no
# 401 and no audit event: see app/server/tls.py). The server's asyncio TLS closes the connection
# without sending an alert, so the client sees end-of-file: under TLS 1.2 while still in the
# handshake (httpx.ConnectError from ssl's SSLEOFError); under TLS 1.3, where the client's side of
# the handshake is done before the server has checked its certificate, on reading the answer
# (httpx.RemoteProtocolError). The good certificate over the same TLS version gets its 200, so the
# refusal is the certificate's, not the server's being away.
@pytest.mark.parametrize("which", ["stranger", "expired"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_certificate_from_another_ca_or_expired_is_refused_in_the_handshake(server, pki, which, version):
    def call(cert: Issued) -> httpx.Response:
        with tls_client(server.base, pki, cert, version=version) as c:
            return c.get("/v1/whoami")
    if version is ssl.TLSVersion.TLSv1_2:
        with pytest.raises(httpx.ConnectError) as info:
            call(getattr(pki, which))
        causes, exc = [], info.value
        while exc is not None:
            causes.append(type(exc))
            exc = exc.__cause__ or exc.__context__
        assert ssl.SSLEOFError in causes, causes  # the handshake ended by the server, not a timeout or a refusal to connect
    else:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            call(getattr(pki, which))
    assert call(pki.alice).json()["person"] == "alice"


def test_without_client_ca_a_certificate_counts_for_nothing(tmp_path, pki, idp):
    running, finish = start_server(tmp_path, pki, idp, client_ca=False)  # bearer tokens only: CERT_NONE
    try:
        refused_401(whoami(running, pki, pki.alice), "no client certificate and no bearer token")
        assert whoami(running, pki, pki.alice, token=idp.token()).json()["person"] == "bob"
    finally:
        finish()


# ------------------------------------------------------------------ bearer tokens
def test_a_good_token_names_its_username_claim(server, pki, idp):
    for token in (idp.token(), idp.token(alg="ES256", kid="ec-1")):
        answer = whoami(server, pki, token=token)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["person"], body["authenticated_by"]) == ("bob", f"oidc:{ISSUER}/00u-bob-42")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(idp: Idp, header: dict, key: bytes | None) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "00u-bob-42", "preferred_username": "bob",
               "iat": now, "exp": now + 300}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key else b""
    return f"{signing_input}.{_b64(signature)}"


def test_alg_none_is_refused(server, pki, idp):
    refused_401(whoami(server, pki, token=_unsigned(idp, {"alg": "none", "typ": "JWT"}, None)), "algorithm")


def test_hs256_signed_with_the_public_key_is_refused(server, pki, idp):
    # the classic confusion: the verifier's RSA *public* key (which anyone may have) as the HMAC secret
    pem = idp.rsa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    forged = _unsigned(idp, {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, pem)
    assert hmac.compare_digest(forged.rsplit(".", 1)[1], _b64(hmac.new(pem, forged.rsplit(".", 1)[0].encode(),
                                                                       hashlib.sha256).digest()))
    refused_401(whoami(server, pki, token=forged), "algorithm")


@pytest.mark.parametrize("claims, says", [
    ({"iss": "https://evil.example.test/realms/ops"}, "another issuer"),
    ({"aud": "some-other-client"}, "another audience"),
    ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "expired"),
    ({"sub": None}, "sub claim"),
    ({"preferred_username": "Bob Smith"}, "not an account name"),
])
def test_a_token_with_a_bad_claim_is_refused(server, pki, idp, claims, says):
    refused_401(whoami(server, pki, token=idp.token(**claims)), says)


def test_a_token_whose_key_is_not_in_the_jwks_is_refused(server, pki, idp):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fetched = len(idp.hits)
    refused_401(whoami(server, pki, token=idp.token(kid="rsa-2", key=other)), "not among the provider's keys")
    refused_401(whoami(server, pki, token=idp.token(kid="rsa-3", key=other)), "not among the provider's keys")
    assert len(idp.hits) - fetched <= 1  # unknown kids refresh the keys at most once per interval
    # and another key under a known kid does not verify
    refused_401(whoami(server, pki, token=idp.token(kid="rsa-1", key=other)), "signature does not verify")


def test_a_token_whose_algorithm_does_not_fit_its_key_is_refused(server, pki, idp):
    refused_401(whoami(server, pki, token=idp.token(alg="ES256", kid="rsa-1")), "does not fit its key")


def test_not_a_bearer_token_is_refused(server, pki):
    with tls_client(server.base, pki) as c:
        refused_401(c.get("/v1/whoami", headers={"Authorization": "Basic YWxpY2U6YWxpY2U="}), "Bearer TOKEN")
        refused_401(c.get("/v1/whoami", headers={"Authorization": "Bearer not-a-jwt"}), "not a well-formed JWT")


def test_the_unix_socket_still_names_the_peer_uid_whatever_token_comes(server, idp):
    import os
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(server.sock)), base_url="http://jit", timeout=10) as c:
        body = c.get("/v1/whoami", headers={"Authorization": f"Bearer {idp.token()}"}).json()
    assert body["authenticated_by"] == f"peer-uid:{os.getuid()}"


# ------------------------------------------------------------------ refusals are audited, bounded
def test_no_certificate_and_no_token_is_401_and_audited_with_the_address(tmp_path, pki, idp):
    running, finish = start_server(tmp_path, pki, idp)  # its own database: only these requests in it
    try:
        with tls_client(running.base, pki, source="127.0.0.7") as c:
            first = c.get("/v1/whoami")
            flood = [c.get("/v1/whoami").status_code for _ in range(20)]
        refused_401(first, "no client certificate and no bearer token")
        assert set(flood) == {401}
        events = refusals(running.sv)
        assert len(events) == 1, events  # one per address per window: the flood is counted, not written
        assert events[0] == {"actor": "anonymous", "address": "127.0.0.7", "method": "GET", "path": "/v1/whoami",
                             "reason": first.json()["error"]["message"], "suppressed": 0, "suppressed_elsewhere": 0}
        with tls_client(running.base, pki, pki.alice, source="127.0.0.8") as c:
            assert c.get("/v1/whoami").status_code == 200
        assert len(refusals(running.sv)) == 1  # a success is no refusal
    finally:
        finish()


# ------------------------------------------------------------------ configuration
def _config(tmp_path: Path, server_toml: str) -> Path:
    path = tmp_path / "jit.toml"
    path.write_text(server_toml)
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_listen_without_a_certificate_names_the_missing_keys(tmp_path):
    problems = _problems(_config(tmp_path, '[server]\nlisten = "127.0.0.1:8443"\nclient_ca = "ca.pem"\n'))
    assert sorted(p.split(":")[0] for p in problems) == ["server.tls_cert", "server.tls_key"], problems


def test_listen_without_a_way_to_prove_callers_is_refused(tmp_path):
    problems = _problems(_config(tmp_path, '[server]\nlisten = "127.0.0.1:8443"\ntls_cert = "c"\ntls_key = "k"\n'))
    assert len(problems) == 1 and problems[0].startswith("server.client_ca: required when listen is set"), problems


@pytest.mark.parametrize("listen", ["8443", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "::1:8443", "[::zz]:1"])
def test_listen_must_be_host_port(tmp_path, listen):
    problems = _problems(_config(tmp_path, f'[server]\nlisten = "{listen}"\ntls_cert = "c"\ntls_key = "k"\n'
                                           'client_ca = "ca"\n'))
    assert len(problems) == 1 and problems[0].startswith("server.listen:"), problems


@pytest.mark.parametrize("algorithms", ['["RS256", "HS256"]', '["none"]', '["HS512"]', '[]', '["XS256"]'])
def test_only_asymmetric_algorithms_are_accepted(tmp_path, algorithms):
    problems = _problems(_config(tmp_path, f"[server.oidc]\nalgorithms = {algorithms}\n"))
    assert len(problems) == 1 and problems[0].startswith("server.oidc.algorithms"), problems


@pytest.mark.parametrize("oidc, key", [
    (f'issuer = "{ISSUER}"\njwks_file = "k.json"\n', "server.oidc.audience"),
    (f'issuer = "{ISSUER}"\naudience = "a"\n', "server.oidc.jwks_file"),
    (f'issuer = "{ISSUER}"\naudience = "a"\njwks_file = "k.json"\njwks_url = "https://idp/k"\n', "server.oidc.jwks_file"),
    ('audience = "a"\njwks_file = "k.json"\n', "server.oidc"),
    (f'issuer = "{ISSUER}"\naudience = "a"\njwks_url = "http://idp.example.test/k"\n', "server.oidc.jwks_url"),
    ('leeway = "1h"\n', "server.oidc.leeway"),
])
def test_oidc_needs_issuer_audience_and_one_key_source(tmp_path, oidc, key):
    problems = _problems(_config(tmp_path, f"[server.oidc]\n{oidc}"))
    assert len(problems) == 1 and problems[0].split(": ")[0] == key, problems


def test_a_complete_config_loads(tmp_path):
    settings = load_config(_config(tmp_path, (
        '[server]\nlisten = "[::1]:8443"\ntls_cert = "c"\ntls_key = "k"\ncert_identity = "email"\n'
        f'[server.oidc]\nissuer = "{ISSUER}"\naudience = "a"\njwks_file = "k.json"\nalgorithms = ["ES256"]\n'))).settings
    assert settings.server.listen == "[::1]:8443" and settings.server.oidc.algorithms == ("ES256",)
    assert settings.server.socket == "/run/jit/jit.sock" and settings.server.oidc.username_claim == "preferred_username"


def test_a_key_readable_by_others_stops_the_server_before_it_listens(tmp_path, pki, idp):
    key = tmp_path / "loose.key"
    key.write_bytes(pki.server.key_path.read_bytes())
    key.chmod(0o644)
    config = sandbox(tmp_path / "sb")
    with open(config, "a") as handle:
        handle.write(_server_toml(pki, free_port(), idp).replace(str(pki.server.key_path), str(key)))
    sv = build(load_config(config))
    sock = Path(tempfile.mkdtemp(prefix="jit-tls-", dir="/tmp")) / "jit.sock"
    try:
        with pytest.raises(ConfigError, match=r"server.tls_key: must not be readable by group or others"):
            serve(sv, sock, threading.Event())
    finally:
        sv.close()
        shutil.rmtree(sock.parent, ignore_errors=True)
    assert not sock.exists()


# ------------------------------------------------------------------ the jit CLI as an https client
def test_the_cli_reaches_the_server_over_https_with_a_certificate_or_a_token(server, pki, idp, tmp_path):
    from app.cli.main import main
    client = tmp_path / "client.toml"
    client.write_text(f'[client]\nserver = "{server.base}"\ncert = "{pki.alice.cert_path}"\n'
                      f'key = "{pki.alice.key_path}"\nca = "{pki.ca.cert_path}"\n')
    out, err = io.StringIO(), io.StringIO()
    assert main(["--config", str(client), "whoami"], {"HOME": str(tmp_path)}, out, err) == 0, err.getvalue()
    assert out.getvalue().startswith("alice  ") and f"cert:{pki.alice.fingerprint}" in out.getvalue()
    tokened = tmp_path / "token.toml"
    tokened.write_text(f'[client]\nserver = "{server.base}"\nca = "{pki.ca.cert_path}"\n')
    out, err = io.StringIO(), io.StringIO()
    assert main(["--config", str(tokened), "whoami"], {"HOME": str(tmp_path), "JIT_TOKEN": idp.token()},
                out, err) == 0, err.getvalue()
    assert out.getvalue().startswith("bob  ") and f"oidc:{ISSUER}/00u-bob-42" in out.getvalue()
    out, err = io.StringIO(), io.StringIO()  # neither: 401, said in one line, exit 2
    assert main(["--config", str(tokened), "whoami"], {"HOME": str(tmp_path)}, out, err) == 2
    assert err.getvalue().startswith("identity error: ") and err.getvalue().count("\n") == 1


# ------------------------------------------------------------------ hosts' agents (server.agent_ca)
def test_a_host_certificate_names_its_host_and_only_opens_its_own_grants(tmp_path, pki, idp):
    hosts = make_ca(tmp_path, "hosts")
    prod = issue(hosts, tmp_path, "prod", cn="web-prod-01")
    person_like = issue(hosts, tmp_path, "alice-host", cn="alice")  # a host CA's certificate is never a person
    running, finish = start_server(tmp_path, pki, idp, agent_ca=hosts.cert_path)
    try:
        with tls_client(running.base, pki, prod) as c:
            ok = c.get("/v1/agent/hosts/web-prod-01/grants")
            assert ok.status_code == 200 and ok.json()["host"] == "web-prod-01", ok.text
            other = c.get("/v1/agent/hosts/web-dev-01/grants")
            assert other.status_code == 403 and "not web-dev-01's agent" in other.json()["error"]["message"]
            assert c.get("/v1/whoami").status_code == 403  # a host is nobody on a person's routes
        with tls_client(running.base, pki, person_like) as c:
            assert c.get("/v1/whoami").status_code == 403
        with tls_client(running.base, pki, pki.alice) as c:  # a person: whoami yes, a host's grants no
            assert c.get("/v1/whoami").json()["person"] == "alice"
            assert c.get("/v1/agent/hosts/web-prod-01/grants").status_code == 403
        with running.sv.store.transaction() as s:
            rows = s.exec(select(AuditEvent).where(AuditEvent.action == "agent.refused").order_by(AuditEvent.seq)).all()
        assert [r.actor for r in rows] == ["agent:web-prod-01", "alice"]
        assert json.loads(rows[0].details)["authenticated"] == "host-cert:" + prod.fingerprint
    finally:
        finish()


def test_agent_ca_may_not_be_client_ca(tmp_path):
    problems = _problems(_config(tmp_path, '[server]\nlisten = "127.0.0.1:8443"\ntls_cert = "c"\ntls_key = "k"\n'
                                           'client_ca = "ca.pem"\nagent_ca = "ca.pem"\n'))
    assert any(p.startswith("server.agent_ca: must not be client_ca") for p in problems), problems
