"""TLS for the TCP listener (``[server] listen``): the server's context, and the caller named by a
client certificate from ``client_ca``.

Verification is OpenSSL's, during the handshake: with ``CERT_OPTIONAL`` a client may come without
a certificate (it then proves itself with a bearer token), but a certificate it does present must
chain to ``client_ca``, be within its validity period and allow client authentication (its
extended key usage, when it has one), or the handshake fails and no request is ever read. So a
certificate that reaches ``cert_principal`` has been verified; this module only names its holder.
Not checked: revocation (no CRL or OCSP is configured yet).

Hosts: with ``agent_ca`` set, a certificate issued directly by a certificate in that bundle names a
host's ``jit agent`` by its CN (``agent:<host>``), and one issued directly by a certificate in
``client_ca`` a person; one issued by neither directly (an intermediate not in either bundle) is
refused, so that a host's certificate can never be read as a person's, nor a person's as a host's.
"""
from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from app.config import check_trusted
from app.domain.errors import ConfigError, IdentityError
from app.domain.principal import AGENT
from app.server.auth import Principal
from policies.names import PERSON, TARGET

if TYPE_CHECKING:
    from app.config import Config, Server


def server_context(config: Config) -> ssl.SSLContext:
    """The listener's context: TLS 1.2 or later, the server's certificate and key, and client
    certificates requested (optional, verified against ``client_ca``) when ``client_ca`` is set."""
    server = config.settings.server
    cert, key = config.path(server.tls_cert), config.path(server.tls_key)
    _private(key, "server.tls_key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc.filename or cert), ["server.tls_cert / server.tls_key: file not found"]) from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(str(cert), [f"server.tls_cert / server.tls_key: not a PEM certificate chain and its "
                                      f"private key ({exc.__class__.__name__})"]) from None
    if server.client_ca:
        ca = config.path(server.client_ca)
        check_trusted(ca, "server.client_ca")  # it decides who may act: nobody else may change it
        try:
            ctx.load_verify_locations(cafile=ca)
        except FileNotFoundError:
            raise ConfigError(str(ca), ["server.client_ca: file not found"]) from None
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(str(ca), [f"server.client_ca: not a PEM CA bundle ({exc.__class__.__name__})"]) from None
        ctx.verify_mode = ssl.CERT_OPTIONAL  # a bearer-token client comes without a certificate
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if server.agent_ca:
        ca = config.path(server.agent_ca)
        check_trusted(ca, "server.agent_ca")  # it decides which host an agent speaks for
        try:
            ctx.load_verify_locations(cafile=ca)
        except FileNotFoundError:
            raise ConfigError(str(ca), ["server.agent_ca: file not found"]) from None
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(str(ca), [f"server.agent_ca: not a PEM CA bundle ({exc.__class__.__name__})"]) from None
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if not (server.client_ca or server.agent_ca):
        ctx.verify_mode = ssl.CERT_NONE  # no client certificate is asked for, so none is trusted
    return ctx


def _private(path: Path, what: str) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(str(path), [f"{what}: file not found"]) from None
    if mode & 0o077:
        raise ConfigError(str(path), [f"{what}: must not be readable by group or others (chmod 600)"])


class Issuers:
    """With ``agent_ca`` set: the certificates in each bundle, to tell a host's from a person's."""

    def __init__(self, config: Config) -> None:
        server = config.settings.server
        self.people = _bundle(config.path(server.client_ca), "server.client_ca") if server.client_ca else []
        self.hosts = _bundle(config.path(server.agent_ca), "server.agent_ca")


def _bundle(path: Path, what: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(str(path), [f"{what}: not a PEM CA bundle ({exc.__class__.__name__})"]) from None


def _issued_by(cert: x509.Certificate, cas: list[x509.Certificate]) -> bool:
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            return True
        except Exception:  # noqa: BLE001 - another issuer, another signature, another key type
            continue
    return False


def cert_principal(request: web.Request, server: Server, issuers: Issuers | None = None) -> Principal | None:
    """The person (or, from ``agent_ca``, the host) a verified client certificate names, or None
    when the connection has none. ``IdentityError`` when it has one that names nobody usable (no
    such name, several, not an account name): a presented certificate is never silently passed
    over for a token."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None or not (server.client_ca or server.agent_ca) \
            or ssl_object.context.verify_mode == ssl.CERT_NONE:
        return None  # no certificate was asked for, so none counts
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)  # verified by OpenSSL in the handshake (see the module doc)
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    if issuers is not None:
        if _issued_by(cert, issuers.hosts):
            names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
            if len(names) != 1 or not re.fullmatch(TARGET, names[0]):
                raise IdentityError("a host certificate (server.agent_ca) must carry exactly one common name (CN), "
                                    "the host's name")
            return Principal(AGENT + names[0].lower(), "host-cert:" + fingerprint)
        if not _issued_by(cert, issuers.people):
            raise IdentityError("the client certificate was not issued directly by a certificate in server.client_ca "
                                "or server.agent_ca")
    person = certificate_person(cert, server.cert_identity)
    return Principal(person, "cert:" + fingerprint)


_SAN = {"email": x509.RFC822Name, "dns": x509.DNSName, "uri": x509.UniformResourceIdentifier}


def certificate_person(cert: x509.Certificate, identity: str) -> str:
    """The account name in ``cert``: the subject's CN, or one SAN of the configured type reduced to an
    account name (an email's local part, a DNS name's first label, a URI's last path segment). The
    certificate must carry exactly one such name, and it must match ``policies.names.PERSON``."""
    if identity == "cn":
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    else:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = x509.SubjectAlternativeName([])
        names = [str(v) for v in san.get_values_for_type(_SAN[identity])]
    what = {"cn": "common name (CN)", "email": "email SAN", "dns": "DNS SAN", "uri": "URI SAN"}[identity]
    if len(names) != 1:
        raise IdentityError(f"the client certificate must carry exactly one {what} (server.cert_identity); "
                            f"it has {len(names)}")
    name = names[0]
    if identity == "email":
        name = name.rpartition("@")[0]
    elif identity == "dns":
        name = name.partition(".")[0]
    elif identity == "uri":
        name = name.rstrip("/").rpartition("/")[2]
    if not re.fullmatch(PERSON, name):
        raise IdentityError(f"the client certificate's {what} is not an account name")
    return name
