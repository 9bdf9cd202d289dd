"""The deployment config (``jit.toml``): parsed and validated before anything starts.

``jit server`` and ``jit engine`` read ``--config``, else ``/etc/jit/jit.toml``, and nothing else
(never a file in the current directory). Clients read only its ``[client]`` table
(``app.client.connection``). Relative paths inside the file are relative to the file's own directory.
"""
from __future__ import annotations

import difflib

import ipaddress
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal, Mapping
from urllib.parse import urlsplit

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationInfo, field_validator,
                      model_validator)

from app.domain.errors import ConfigError
from policies.loader import PolicyError, build, parse_toml
from policies.model import Duration
from policies.names import PERSON


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Database(_Strict):
    url: str = ""  # empty: SQLite file jit.db in data_dir

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value and not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return value


class Paths(_Strict):
    data_dir: str = "~/.local/share/jit"
    policy: str = "policies/default.toml"


class Identity(_Strict):
    allow_impersonation: StrictBool | None = None  # gone: refused with a sentence saying where it went

    @field_validator("allow_impersonation")
    @classmethod
    def _gone(cls, value: bool | None) -> None:
        if value is not None:
            raise ValueError("no longer exists: the person is the one the kernel, a certificate or a token "
                             "names; only 'jit server --dev DIR' lets a client play someone (remove this key)")
        return None


class Client(_Strict):
    """What a client (``jit``, ``jit console``) reads of this file: where the server is."""

    server: str = ""  # unix:///run/jit/jit.sock or https://HOST:PORT
    cert: str = ""
    key: str = ""
    ca: str = ""


class Person(_Strict):
    display_name: str = ""
    groups: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$")], ...] = ()


class Directory(_Strict):
    kind: Literal["static", "ldap"] = "static"  # ldap: people and groups from [backends.ldap]
    cache_ttl: Duration = timedelta(seconds=60)
    people: dict[Annotated[str, Field(pattern=PERSON)], Person] = {}


class SudoSettings(_Strict):
    sudoers_dir: str = "/etc/sudoers.d"
    visudo: str = "/usr/sbin/visudo"  # absolute and root-owned: the server refuses anything else
    cvtsudoers: str = "/usr/bin/cvtsudoers"
    timestamp_dir: str = ""  # sudo's credential cache (/run/sudo/ts); emptied per user at revoke
    runas: str = "root"


class SudoLdapSettings(_Strict):
    enabled: StrictBool = False  # sudoRole entries, on [backends.ldap]'s connection settings
    sudoers_base: str = "ou=SUDOers,dc=example,dc=org"
    runas: str = "root"


class AgentSettings(_Strict):
    enabled: StrictBool = False  # sudo grants written by each target host's own `jit agent`
    wait: Duration = timedelta(seconds=10)  # how long an apply or revoke waits for the host's report

    @field_validator("wait")
    @classmethod
    def _below_lease(cls, value: timedelta) -> timedelta:
        if not timedelta(0) < value <= timedelta(seconds=50):
            raise ValueError("must be more than 0 s and at most 50 s (below the engine's lease)")
        return value


class LdapSettings(_Strict):
    enabled: StrictBool = False
    uri: str = "ldaps://ad.example.internal"
    bind_dn: str = "cn=svc-jit,ou=service,dc=example,dc=org"
    bind_password_env: str = "JIT_LDAP_PASSWORD"  # the bind password comes from this variable...
    bind_password_file: str = ""                  # ...or this file (chmod 600)
    user_base: str = "ou=people,dc=example,dc=org"
    user_attr: str = Field(default="uid", pattern=r"^[A-Za-z][A-Za-z0-9-]{0,63}$")  # AD: sAMAccountName
    user_object_class: str = Field(default="inetOrgPerson", pattern=r"^[A-Za-z][A-Za-z0-9-]{0,63}$")
    group_base: str = "ou=groups,dc=example,dc=org"
    active_directory: StrictBool = False  # TTL-linked membership: AD drops it at expiry by itself
    tls: Literal["none", "starttls", "ldaps"] = "ldaps"
    ca_file: str = ""
    validate_cert: StrictBool = True
    timeout: Duration = timedelta(seconds=10)


class AwsSettings(_Strict):
    enabled: StrictBool = False
    mode: Literal["role", "identity_center"] = "role"
    region: str = Field(default="us-east-1", pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    endpoint_url: str = ""  # only for testing against a local endpoint (moto); credentials: boto3's chain
    identity_center_instance_arn: str = ""
    identity_store_id: str = ""
    max_attempts: StrictInt = Field(default=5, ge=1, le=20)  # boto3 standard retry mode


class WindowsSettings(_Strict):
    enabled: StrictBool = False
    username: str = "svc_jit"
    password_env: str = "JIT_WINRM_PASSWORD"
    password_file: str = ""
    port: StrictInt = Field(default=5986, ge=1, le=65535)
    ssl: StrictBool = True
    cert_validation: StrictBool = True
    auth: Literal["negotiate", "kerberos", "ntlm", "certificate", "basic"] = "negotiate"
    domain: str = ""  # members become DOMAIN\person
    jea_endpoint: str = "JIT"
    timeout: Duration = timedelta(seconds=30)
    # Accounts never granted, listed or removed in managed local groups. Windows does not record
    # who added a member, so reconcile --fix removes every member no grant backs, except these.
    protected_members: tuple[str, ...] = ("Administrator",)


class Backends(_Strict):
    sudo: SudoSettings = SudoSettings()
    ldap: LdapSettings = LdapSettings()
    sudo_ldap: SudoLdapSettings = SudoLdapSettings()
    agent: AgentSettings = AgentSettings()
    aws: AwsSettings = AwsSettings()
    windows: WindowsSettings = WindowsSettings()


class EngineSettings(_Strict):
    poll_interval: Duration = timedelta(seconds=5)
    sweep_interval: Duration = timedelta(seconds=30)
    lease: Duration = timedelta(seconds=60)
    apply_attempts: StrictInt = Field(default=3, ge=1, le=20)
    retry_backoff: Duration = timedelta(seconds=1)
    reconcile_interval: Duration = timedelta(hours=1)
    reconcile_fix: StrictBool = True  # the scheduled reconcile removes standing privileges and restores missing ones


class ServiceNow(_Strict):
    enabled: StrictBool = False
    url: str = "http://127.0.0.1:8080"
    user: str = "admin"
    password_env: str = "JIT_SNOW_PASSWORD"  # the password comes from this variable...
    password_file: str = ""                  # ...or from this file (mode 0600); never from this config
    client_id: str = ""                      # set for OAuth (password grant); empty: basic auth
    client_secret_env: str = "JIT_SNOW_CLIENT_SECRET"
    client_secret_file: str = ""
    timeout: Duration = timedelta(seconds=10)
    retries: StrictInt = Field(default=4, ge=0, le=10)
    breaker_threshold: StrictInt = Field(default=5, ge=1, le=100)
    breaker_cooldown: Duration = timedelta(seconds=30)
    page_size: StrictInt = Field(default=500, ge=1, le=10000)
    sync_interval: Duration = timedelta(seconds=30)
    initial_lookback: Duration = timedelta(days=7)  # how far back the first sync reads
    target_field: str = Field(default="u_jit_target", pattern=r"^u_[a-z0-9_]{1,60}$")
    role_field: str = Field(default="u_jit_role", pattern=r"^u_[a-z0-9_]{1,60}$")
    create_missing_change: StrictBool = False  # a request or bypass without a ticket opens a change
    write_back: StrictBool = True  # work notes on the linked ticket at every step

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL such as https://example.service-now.com")
        return value.rstrip("/")


class Notify(_Strict):
    webhook_url_env: str = "JIT_WEBHOOK_URL"  # Slack/Teams-compatible JSON webhook; the URL is a secret
    webhook_url_file: str = ""
    webhook_secret_env: str = "JIT_WEBHOOK_SECRET"  # shared secret: each message signed (HMAC-SHA256)...
    webhook_secret_file: str = ""                   # ...or from this file (chmod 600); unset: unsigned, warned
    timeout: Duration = timedelta(seconds=5)
    expiry_warning: Duration = timedelta(minutes=15)


class Console(_Strict):
    # binding id -> key(s), e.g. approve = "y" or revoke = "ctrl+r"; see `?` in the console for the ids
    keys: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,40}$")], str] = {}

    @field_validator("keys")
    @classmethod
    def _known_ids(cls, keys: dict[str, str]) -> dict[str, str]:
        from app.domain.console import BINDING_IDS
        unknown = sorted(set(keys) - set(BINDING_IDS))
        if unknown:
            near = difflib.get_close_matches(unknown[0], BINDING_IDS, n=1)
            raise ValueError(f"{unknown[0]!r} is not a binding of the console"
                             + (f" (did you mean {near[0]!r}?)" if near else "") + f"; the ids: {', '.join(BINDING_IDS)}")
        for name, key in keys.items():
            if not key.strip() or any(not part.strip() for part in key.split(",")):
                raise ValueError(f"{name}: {key!r} names no key (a key, or keys separated by commas)")
        return keys


class Logging(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


# Only asymmetric JOSE algorithms: with "none" nobody signs, and with HS* the verifier's key is a
# shared secret, so a server holding the IdP's *public* key would accept tokens anyone can sign.
JoseAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
_JOSE = set(JoseAlgorithm.__args__)  # type: ignore[attr-defined]


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Oidc(_Strict):
    """Bearer tokens from one OpenID Connect provider (``[server.oidc]``); off while every key is empty.
    Cross-field rules are field validators reading the fields declared before them (``info.data``),
    so each problem is reported at its own key (``server.oidc.audience: required ...``)."""

    issuer: str = ""               # the exact "iss" of its tokens, e.g. https://idp.example.org/realms/ops
    audience: str = Field(default="", validate_default=True)   # the "aud" its tokens carry for jit
    jwks_url: str = ""             # its signing keys over https (plain http only on loopback)...
    jwks_file: str = Field(default="", validate_default=True)  # ...or a JWKS JSON file; exactly one of the two
    username_claim: str = Field(default="preferred_username", pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
    algorithms: tuple[JoseAlgorithm, ...] = ("RS256", "ES256")  # the only ones a token may use
    leeway: Duration = timedelta(seconds=30)  # clock skew allowed on exp / nbf / iat

    @field_validator("audience")
    @classmethod
    def _audience(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("issuer") and not value:
            raise ValueError("required when issuer is set (tokens for other clients must not count)")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _keys_url(cls, value: str) -> str:
        if not value:
            return value
        url = urlsplit(value)
        if url.scheme == "https" and url.hostname:
            return value
        if url.scheme == "http" and url.hostname and _loopback(url.hostname):
            return value
        raise ValueError("must be an https:// URL (http:// only on loopback): the keys decide who may act")

    @field_validator("jwks_file")
    @classmethod
    def _one_source(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("issuer") and "jwks_url" in info.data and bool(info.data["jwks_url"]) == bool(value):
            raise ValueError("set exactly one of jwks_url and jwks_file")
        return value

    @field_validator("algorithms", mode="before")
    @classmethod
    def _asymmetric(cls, value: object) -> object:
        if isinstance(value, (list, tuple)) and not value:
            raise ValueError("name at least one algorithm")
        for alg in value if isinstance(value, (list, tuple)) else ():
            if isinstance(alg, str) and alg not in _JOSE and (alg.lower() == "none" or alg.upper().startswith("HS")):
                raise ValueError(f"{alg!r} is refused: only asymmetric algorithms ({', '.join(sorted(_JOSE))}); "
                                 "with 'none' or HS* anyone could mint a token")
        return value

    @field_validator("leeway")
    @classmethod
    def _small(cls, value: timedelta) -> timedelta:
        if not timedelta(0) <= value <= timedelta(minutes=5):
            raise ValueError("must be between 0s and 5m")
        return value

    @model_validator(mode="after")
    def _issuer(self) -> "Oidc":
        if not self.issuer and (self.audience or self.jwks_url or self.jwks_file):
            raise ValueError("issuer is required when any other [server.oidc] key is set")
        return self


class Server(_Strict):
    """``jit server``: the Unix socket always; TCP with TLS when ``listen`` is set. Fields are declared
    in the order their cross-field validators read them (see ``Oidc``)."""

    socket: str = "/run/jit/jit.sock"  # 0666 inside a 0755 directory: who may do what is decided per call
    listen: str = ""               # "HOST:PORT" ("[::1]:8443" for IPv6): TCP with TLS beside the socket
    tls_cert: str = Field(default="", validate_default=True)   # the server's certificate chain (PEM)
    tls_key: str = Field(default="", validate_default=True)    # its private key (PEM, chmod 600)
    oidc: Oidc = Oidc()            # callers proven by a bearer token...
    client_ca: str = Field(default="", validate_default=True)  # ...or by a client certificate from this CA (PEM)
    cert_identity: Literal["cn", "email", "dns", "uri"] = "cn"  # which name in the certificate is the person
    agent_ca: str = ""  # hosts' `jit agent`s: a certificate this CA issued names a host by its CN (PEM)
    rate_limit: StrictInt = Field(default=50, ge=1, le=100_000)   # calls a second per person, past the burst...
    rate_burst: StrictInt = Field(default=200, ge=1, le=100_000)  # ...then 429 with Retry-After

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value:
            split_listen(value)
        return value

    @field_validator("tls_cert", "tls_key")
    @classmethod
    def _tls(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("listen") and not value:
            raise ValueError("required when listen is set (TCP is served only with TLS)")
        return value

    @field_validator("agent_ca")
    @classmethod
    def _not_the_people_ca(cls, value: str, info: ValidationInfo) -> str:
        if value and value == info.data.get("client_ca"):
            raise ValueError("must not be client_ca: a certificate must name either a person or a host, and "
                             "which one is decided by the CA that issued it")
        return value

    @field_validator("client_ca")
    @classmethod
    def _proof(cls, value: str, info: ValidationInfo) -> str:
        oidc = info.data.get("oidc")
        if info.data.get("listen") and not value and oidc is not None and not oidc.issuer:
            raise ValueError("required when listen is set, unless [server.oidc] is configured: "
                             "a TCP caller must be proven by a certificate or a token")
        return value


def split_listen(value: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:8443"``) as ``(host, port)``; ValueError saying what is wrong."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{value!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{value!r}: write an IPv6 address in brackets, e.g. [::1]:8443")
    if not sep or not host or not re.fullmatch(r"[A-Za-z0-9.:-]{1,253}", host):
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 0.0.0.0:8443 or [::1]:8443)")
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{value!r}: the port must be 1-65535")
    return host, int(port)


class Settings(_Strict):
    database: Database = Database()
    paths: Paths = Paths()
    identity: Identity = Identity()
    directory: Directory = Directory()
    backends: Backends = Backends()
    engine: EngineSettings = EngineSettings()
    servicenow: ServiceNow = ServiceNow()
    notify: Notify = Notify()
    console: Console = Console()
    logging: Logging = Logging()
    server: Server = Server()
    client: Client = Client()


class Config:
    """Validated settings plus the file they came from, with paths resolved."""

    def __init__(self, settings: Settings, source: Path) -> None:
        self.settings = settings
        self.source = source
        self.base = source.parent

    def path(self, value: str) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (self.base / p).resolve()

    @property
    def data_dir(self) -> Path:
        return self.path(self.settings.paths.data_dir)

    @property
    def policy_path(self) -> Path:
        return self.path(self.settings.paths.policy)

    @property
    def database_url(self) -> str:
        url = self.settings.database.url
        return url or f"sqlite:///{self.data_dir / 'jit.db'}"


def secret(config: "Config", environ: Mapping[str, str], env_name: str, file_name: str, what: str) -> str | None:
    """A secret from the named environment variable, else from the file; None when neither is set."""
    if env_name and environ.get(env_name):
        return environ[env_name]
    if file_name:
        path = config.path(file_name)
        try:
            if path.stat().st_mode & 0o077:
                raise ConfigError(str(path), [f"{what}: file must not be readable by group or others (chmod 600)"])
            return path.read_text().strip() or None
        except FileNotFoundError:
            raise ConfigError(str(path), [f"{what}: file not found"]) from None
        except OSError as exc:
            raise ConfigError(str(path), [f"{what}: cannot read ({exc.strerror})"]) from None
    return None


def check_trusted(path: Path, what: str) -> None:
    """Refuse a file that decides what ``jit`` does (the config, a policy) unless root or this
    account owns it and nobody else can write it: sudo's rule for sudoers. So a ``jit.toml`` that
    another user left in a shared directory, naming their own ``visudo``, is never obeyed."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return  # reading it reports the missing file
    except OSError as exc:
        raise ConfigError(str(path), [f"{what}: cannot read ({exc.strerror})"]) from None
    me = os.geteuid()
    if st.st_uid not in (0, me):
        raise ConfigError(str(path), [f"{what}: owned by uid {st.st_uid}, not by root or uid {me}: "
                                      "refusing to obey a file someone else controls"])
    if st.st_mode & 0o022:
        raise ConfigError(str(path), [f"{what}: writable by group or others (chmod go-w): "
                                      "refusing to obey a file someone else can change"])


def load_config(path: Path) -> Config:
    check_trusted(path, "config")
    try:
        settings = build(Settings, parse_toml(path), str(path))
    except PolicyError as exc:
        raise ConfigError(exc.source, exc.problems) from None
    return Config(settings, path.resolve())
