"""A real, throw-away OpenLDAP ``slapd`` for the demo and the integration tests.

``start_slapd(tmp_path)`` writes a ``slapd.conf`` (core, cosine and inetorgperson schemas, one
``mdb`` database for ``dc=example,dc=org``) into ``tmp_path/slapd``, starts ``slapd`` in the
foreground (``-d 0``) on a free ``127.0.0.1`` port, waits until it answers a bind as the root DN,
loads ``BASE_TREE`` through LDAP adds and returns a ``Slapd`` handle. ``stop()`` terminates it;
``restart()`` starts it again on the same port with the same database; ``pause()``/``resume()``
send SIGSTOP/SIGCONT to simulate a hung server (the kernel still accepts TCP connections, nothing
answers). The ``slapd_server`` fixture wraps it and skips with a clear reason when ``slapd`` is not
installed. Works as root or as an ordinary user (everything lives under ``tmp_path``).

``start_slapd(tmp_path, tls=True)`` also generates a throw-away CA and a server certificate for
``tls_names`` (default 127.0.0.1 and localhost) (needs the ``cryptography`` package; see ``have_tls()``), enables StartTLS on
``uri`` and listens for LDAPS on ``ldaps_uri``; the CA certificate is ``ca_file``.

Base tree (``BASE_TREE``): ``ou=people`` with alice, bob, carol, dave, erin (inetOrgPerson);
a duplicate-uid trap ``uid=twin`` in both ``ou=people`` and ``ou=contractors``; ``ou=groups`` with
groupOfNames engineers (alice, dave), managers (bob), system-owners (carol), oncall (dave),
security (erin) and the managed targets web-admins and db-admins, which hold only the
placeholder member ``PLACEHOLDER_DN`` (a groupOfNames needs at least one member); ``ou=SUDOers``,
empty, for sudoRole entries (sudo's own schema, ``sudo.schema`` beside this file, is loaded).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

SLAPD = shutil.which("slapd") or shutil.which("slapd", path="/usr/sbin:/usr/local/sbin:/sbin") or "/usr/sbin/slapd"
SKIP_REASON = "slapd not installed: .ci/run installs slapd and ldap-utils"

BASE_DN = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{BASE_DN}"
ADMIN_PASSWORD = "s3cret-Adm1n-pw"
PEOPLE_DN = f"ou=people,{BASE_DN}"
CONTRACTORS_DN = f"ou=contractors,{BASE_DN}"
GROUPS_DN = f"ou=groups,{BASE_DN}"
SUDOERS_DN = f"ou=SUDOers,{BASE_DN}"  # sudoRole entries (the sudo_ldap backend)
SUDO_SCHEMA = Path(__file__).with_name("sudo.schema")
PLACEHOLDER_DN = f"cn=nobody,{BASE_DN}"
PEOPLE = ("alice", "bob", "carol", "dave", "erin")

_SCHEMA_DIRS = ("/etc/ldap/schema", "/etc/openldap/schema", "/usr/local/etc/openldap/schema")
_MODULE_DIRS = ("/usr/lib/ldap", "/usr/lib64/openldap", "/usr/lib/openldap", "/usr/libexec/openldap")
_SCHEMAS = ("core", "cosine", "inetorgperson")


def user_dn(uid: str, ou: str = PEOPLE_DN) -> str:
    return f"uid={uid},{ou}"


def group_dn(cn: str) -> str:
    return f"cn={cn},{GROUPS_DN}"


def _person(uid: str, ou: str = PEOPLE_DN) -> tuple[str, dict[str, object]]:
    return user_dn(uid, ou), {
        "objectClass": ["inetOrgPerson"],
        "uid": uid,
        "cn": uid.capitalize(),
        "sn": uid.capitalize(),
    }


def _group(cn: str, members: Sequence[str]) -> tuple[str, dict[str, object]]:
    return group_dn(cn), {"objectClass": ["groupOfNames"], "cn": cn, "member": list(members)}


BASE_TREE: tuple[tuple[str, dict[str, object]], ...] = (
    (BASE_DN, {"objectClass": ["dcObject", "organization"], "dc": "example", "o": "Example"}),
    (PEOPLE_DN, {"objectClass": ["organizationalUnit"], "ou": "people"}),
    (CONTRACTORS_DN, {"objectClass": ["organizationalUnit"], "ou": "contractors"}),
    (GROUPS_DN, {"objectClass": ["organizationalUnit"], "ou": "groups"}),
    (SUDOERS_DN, {"objectClass": ["organizationalUnit"], "ou": "SUDOers"}),
    *(_person(uid) for uid in PEOPLE),
    _person("twin"),
    _person("twin", CONTRACTORS_DN),
    _group("engineers", [user_dn("alice"), user_dn("dave")]),
    _group("managers", [user_dn("bob")]),
    _group("system-owners", [user_dn("carol")]),
    _group("oncall", [user_dn("dave")]),
    _group("security", [user_dn("erin")]),
    _group("web-admins", [PLACEHOLDER_DN]),
    _group("db-admins", [PLACEHOLDER_DN]),
)


def have_tls() -> bool:
    return importlib.util.find_spec("cryptography") is not None


TLS_SKIP_REASON = "the cryptography package is needed to make test certificates"


def _make_certificates(workdir: Path, names: Sequence[str] = ("127.0.0.1", "localhost")) -> Path:
    """A CA and a server certificate for ``names`` (IP addresses or host names); returns the CA file."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def build(subject: str, issuer: x509.Name | None, key, signer, *, ca: bool) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            sans: list[x509.GeneralName] = []
            for n in names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    sans.append(x509.DNSName(n))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("jit-access test CA", None, ca_key, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build(names[0], ca_cert.subject, key, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (workdir / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (workdir / "server.pem").write_bytes(cert.public_bytes(pem))
    key_file = workdir / "server.key"
    key_file.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return workdir / "ca.pem"


def have_slapd() -> bool:
    return os.path.isfile(SLAPD) and os.access(SLAPD, os.X_OK) and _schema_dir() is not None


def _schema_dir() -> str | None:
    for d in _SCHEMA_DIRS:
        if all(os.path.isfile(os.path.join(d, f"{s}.schema")) for s in _SCHEMAS):
            return d
    return None


def _module_lines() -> str:
    """``moduleload back_mdb`` where the distribution builds it as a module (Debian does)."""
    for d in _MODULE_DIRS:
        if any(os.path.exists(os.path.join(d, f"back_mdb{ext}")) for ext in (".la", ".so")):
            return f"modulepath {d}\nmoduleload back_mdb\n"
    return ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Slapd:
    """A running ``slapd``; see the module docstring."""

    workdir: Path
    port: int
    base_dn: str = BASE_DN
    admin_dn: str = ADMIN_DN
    admin_password: str = ADMIN_PASSWORD
    startup_timeout: float = 15.0
    ldaps_port: int | None = None
    ca_file: Path | None = None
    tls_names: tuple[str, ...] = ("127.0.0.1", "localhost")
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _paused: bool = field(default=False, repr=False)

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_uri(self) -> str | None:
        return None if self.ldaps_port is None else f"ldaps://127.0.0.1:{self.ldaps_port}"

    @property
    def conf(self) -> Path:
        return self.workdir / "slapd.conf"

    @property
    def log(self) -> Path:
        return self.workdir / "slapd.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -----------------------------------------------------------

    def write_config(self) -> None:
        schema_dir = _schema_dir()
        if schema_dir is None:
            raise RuntimeError(f"no OpenLDAP schema directory found in {_SCHEMA_DIRS}")
        (self.workdir / "db").mkdir(parents=True, exist_ok=True)
        includes = "".join(f"include {schema_dir}/{s}.schema\n" for s in _SCHEMAS) + f"include {SUDO_SCHEMA}\n"
        tls = ""
        if self.ldaps_port is not None:
            self.ca_file = _make_certificates(self.workdir, self.tls_names)
            tls = (f"TLSCACertificateFile {self.ca_file}\n"
                   f"TLSCertificateFile {self.workdir / 'server.pem'}\n"
                   f"TLSCertificateKeyFile {self.workdir / 'server.key'}\n")
        self.conf.write_text(
            f"{includes}"
            f"pidfile {self.workdir}/slapd.pid\n"
            f"argsfile {self.workdir}/slapd.args\n"
            f"{tls}"
            f"{_module_lines()}"
            "database mdb\n"
            "maxsize 67108864\n"
            f'suffix "{self.base_dn}"\n'
            f'rootdn "{self.admin_dn}"\n'
            f"rootpw {self.admin_password}\n"
            f"directory {self.workdir}/db\n"
            "index objectClass eq\n"
            "index uid,cn eq\n"
            "index member eq\n",
            encoding="utf-8",
        )

    def start(self) -> None:
        if self.running:
            return
        urls = f"{self.uri}/" + ("" if self.ldaps_uri is None else f" {self.ldaps_uri}/")
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                [SLAPD, "-f", str(self.conf), "-h", urls, "-d", "0"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        self._paused = False
        self._wait_ready()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if self._paused:
            self._signal(proc, signal.SIGCONT)
            self._paused = False
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers. Returns once every
        thread has stopped (signal delivery is asynchronous: a busy machine could otherwise
        still answer a request sent right after)."""
        if self._proc is not None and not self._paused:
            self._signal(self._proc, signal.SIGSTOP)
            self._paused = True
            self._wait_stopped(self._proc.pid)

    @staticmethod
    def _wait_stopped(pid: int, timeout: float = 5.0) -> None:
        tasks = Path(f"/proc/{pid}/task")
        deadline = time.monotonic() + timeout
        while tasks.is_dir() and time.monotonic() < deadline:
            try:
                states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks.iterdir()]
            except (OSError, IndexError):
                return
            if all(s in ("T", "t") for s in states):
                return
            time.sleep(0.005)

    def resume(self) -> None:
        if self._proc is not None and self._paused:
            self._signal(self._proc, signal.SIGCONT)
            self._paused = False

    # -- helpers -------------------------------------------------------------

    def connection(self):
        """A fresh ldap3 connection bound as the root DN (for arranging and checking state)."""
        import ldap3

        server = ldap3.Server(self.uri, get_info=ldap3.NONE, connect_timeout=5)
        return ldap3.Connection(server, self.admin_dn, self.admin_password, auto_bind=True,
                                receive_timeout=10, raise_exceptions=True)

    def load(self, entries: Sequence[tuple[str, dict[str, object]]]) -> None:
        conn = self.connection()
        try:
            for dn, attrs in entries:
                attrs = dict(attrs)
                classes = attrs.pop("objectClass")
                conn.add(dn, classes, attrs)
        finally:
            conn.unbind()

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass

    def _wait_ready(self) -> None:
        import ldap3
        from ldap3.core.exceptions import LDAPException

        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                break
            try:
                server = ldap3.Server(self.uri, get_info=ldap3.NONE, connect_timeout=1)
                conn = ldap3.Connection(server, self.admin_dn, self.admin_password, receive_timeout=2)
                if conn.bind():
                    conn.unbind()
                    return
                conn.unbind()
            except LDAPException as exc:
                last = exc
            time.sleep(0.05)
        log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        self.stop()
        raise RuntimeError(f"slapd did not answer on {self.uri} (last error: {last}); log tail:\n{log}")


def start_slapd(tmp_path: Path, entries: Sequence[tuple[str, dict[str, object]]] | None = None, *,
                tls: bool = False, tls_names: Sequence[str] = ("127.0.0.1", "localhost")) -> Slapd:
    """Start a fresh slapd under ``tmp_path/slapd`` loaded with ``entries`` (default ``BASE_TREE``),
    with StartTLS and LDAPS when ``tls`` is true (server certificate for ``tls_names``).

    The caller must ``stop()`` it (the ``slapd_server`` fixture does)."""
    if not have_slapd():
        raise RuntimeError(SKIP_REASON)
    if tls and not have_tls():
        raise RuntimeError(TLS_SKIP_REASON)
    workdir = Path(tmp_path) / "slapd"
    workdir.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for _ in range(3):  # the free port can be taken between probing and binding
        server = Slapd(workdir=workdir, port=_free_port(), ldaps_port=_free_port() if tls else None,
                       tls_names=tuple(tls_names))
        server.write_config()
        try:
            server.start()
            break
        except RuntimeError as exc:
            last = exc
    else:
        raise RuntimeError(f"could not start slapd: {last}")
    try:
        server.load(BASE_TREE if entries is None else entries)
    except BaseException:
        server.stop()
        raise
    return server
