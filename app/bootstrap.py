"""The one place that chooses concrete parts and wires them: CLI, console and tests build here."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from app.clock import Clock, system_clock
from app.config import Config, check_trusted, secret
from app.domain.errors import ConfigError
from app.fleet.reports import HostReports
from app.identity import Directory, StaticDirectory
from app.jobs.engine import Engine
from app.jobs.outbox import Deliverer
from app.jobs.reconcile import Reconciler
from app.jobs.sync import TicketSync
from app.lifecycle import Lifecycle, OutboxSettings
from app.lifecycle.ticket_facts import TicketGateway
from app.store import Store
from integrations.base import Backend
from integrations.sudo import SudoBackend
from policies.loader import load_policy
from policies.model import PolicySet

if TYPE_CHECKING:
    from integrations.notify import Webhook
    from integrations.servicenow.tickets import Tickets


@dataclass
class Services:
    config: Config
    policy: PolicySet
    store: Store
    directory: Directory
    backends: dict[str, Backend]
    lifecycle: Lifecycle
    engine: Engine
    clock: Clock
    tickets: Tickets | None = None
    sync: TicketSync | None = None
    deliverer: Deliverer | None = None
    reconciler: Reconciler | None = None
    host_reports: HostReports | None = None  # what hosts' agents report they hold

    def close(self) -> None:
        self.engine.stop()
        if self.tickets is not None:
            self.tickets.client.close()
        self.store.dispose()


def lint_backends(config: Config | None, policy: PolicySet, environ: Mapping[str, str]) -> dict[str, Backend]:
    """The backends that check a policy's role settings for ``jit policy lint``: the configured ones
    (no secrets needed), or the default sudo backend when there is no usable config."""
    if config is None:
        return {"sudo": SudoBackend("/etc/sudoers.d")}
    return build_backends(config, policy, environ, for_lint=True)


def build_backends(config: Config, policy: PolicySet, environ: Mapping[str, str], *,
                   for_lint: bool = False) -> dict[str, Backend]:
    """The enabled backends, configured; ``for_lint`` needs no secrets (nothing connects)."""
    b = config.settings.backends

    def password(env: str, file: str, what: str) -> str:
        if for_lint:
            return "unused-for-lint"
        value = secret(config, environ, env, file, what)
        if value is None:
            raise ConfigError(str(config.source), [f"{what}: set ${env} or the matching _file key"])
        return value

    def roles(backend: str):
        return [r for t in policy.targets.values() if t.backend == backend for r in t.roles.values()]

    sudo = b.sudo
    backends: dict[str, Backend] = {"sudo": SudoBackend(
        config.path(sudo.sudoers_dir), visudo=sudo.visudo, cvtsudoers=sudo.cvtsudoers,
        timestamp_dir=config.path(sudo.timestamp_dir) if sudo.timestamp_dir else None, runas=sudo.runas)}
    try:
        # Each concrete integration is imported only when it is enabled: boto3, ldap3 and pypsrp cost
        # a command line that does not use them a second or more of imports.
        if b.ldap.enabled:
            from integrations.ldap import LdapBackend
            ld = b.ldap
            backends["ldap"] = LdapBackend(
                ld.uri, ld.bind_dn, password(ld.bind_password_env, ld.bind_password_file, "backends.ldap password"),
                user_base=ld.user_base, user_attr=ld.user_attr, user_object_class=ld.user_object_class,
                group_base=ld.group_base, managed_groups=sorted({r.group_dn for r in roles("ldap") if r.group_dn}),
                active_directory=ld.active_directory, tls=ld.tls, ca_file=config.path(ld.ca_file) if ld.ca_file
                else None, validate_cert=ld.validate_cert, timeout=ld.timeout.total_seconds())
        if b.sudo_ldap.enabled:
            from integrations.ldap.sudoers import SudoLdapBackend
            if "ldap" not in backends:
                raise ConfigError(str(config.source), ["backends.sudo_ldap: needs [backends.ldap] enabled = true "
                                                       "(the directory's connection settings are shared)"])
            backends["sudo_ldap"] = SudoLdapBackend(backends["ldap"], sudoers_base=b.sudo_ldap.sudoers_base,
                                                    runas=b.sudo_ldap.runas)
        if b.agent.enabled:
            from app.fleet.backend import AgentBackend
            backends["agent"] = AgentBackend(wait=b.agent.wait.total_seconds())
        if b.aws.enabled:
            from integrations.aws import AwsBackend
            aw = b.aws
            backends["aws"] = AwsBackend(
                mode=aw.mode, region=aw.region, endpoint_url=aw.endpoint_url or None,
                identity_center_instance_arn=aw.identity_center_instance_arn or None,
                identity_store_id=aw.identity_store_id or None, max_attempts=aw.max_attempts,
                managed_assignments=sorted({(r.account_id, r.permission_set_arn) for r in roles("aws")
                                            if r.account_id and r.permission_set_arn}))
        if b.windows.enabled:
            from integrations.windows import PsrpRunner, WindowsBackend
            w = b.windows
            runner = PsrpRunner(w.username, password(w.password_env, w.password_file, "backends.windows password"),
                                port=w.port, ssl=w.ssl, cert_validation=w.cert_validation, auth=w.auth,
                                timeout=w.timeout.total_seconds())
            win_targets = [(t, r) for t, tg in policy.targets.items() if tg.backend == "windows"
                           for r in tg.roles.values()]
            backends["windows"] = WindowsBackend(
                runner, domain=w.domain or None, jea_endpoint=w.jea_endpoint,
                managed=sorted({(t, r.local_group) for t, r in win_targets if r.local_group}),
                jea_hosts=sorted({t for t, r in win_targets if r.jea_role}), protected_members=w.protected_members)
    except ValueError as exc:
        raise ConfigError(str(config.source), [f"backends: {exc}"]) from None
    return backends


def build_directory(config: Config, backends: Mapping[str, Backend]) -> Directory:
    d = config.settings.directory
    if d.kind == "ldap":
        from integrations.ldap import LdapBackend, LdapDirectory
        ldap = backends.get("ldap")
        if not isinstance(ldap, LdapBackend):
            raise ConfigError(str(config.source), ["directory.kind: 'ldap' needs [backends.ldap] enabled = true"])
        return LdapDirectory(ldap, cache_ttl=d.cache_ttl.total_seconds())
    return StaticDirectory.from_config(config)


def policy_problems(policy: PolicySet, backends: Mapping[str, Backend]) -> list[str]:
    """What the backends refuse in the policy's roles (e.g. an unsafe sudo command)."""
    problems = []
    for tname, target in policy.targets.items():
        backend = backends.get(target.backend)
        if backend is None:
            problems.append(f"targets.{tname}.backend: {target.backend!r} is not configured")
            continue
        for rname, role in target.roles.items():
            problems += [f"targets.{tname}.roles.{rname}.{p}" for p in backend.validate_role(role.params)]
    return problems


def policy_warnings(policy: PolicySet, backends: Mapping[str, Backend]) -> list[str]:
    """What valid roles opt out of (a sudo role's ``allow_any_arguments``, ``allow_exec``): lint prints
    these and still passes, because each is an explicit, reasoned choice in the policy."""
    warnings = []
    for tname, target in policy.targets.items():
        check = getattr(backends.get(target.backend), "role_warnings", None)
        if check is None:
            continue
        for rname, role in target.roles.items():
            warnings += [f"targets.{tname}.roles.{rname}.{w}" for w in check(role.params)]
    return warnings


def build_tickets(config: Config, environ: Mapping[str, str]) -> Tickets | None:
    sn = config.settings.servicenow
    if not sn.enabled:
        return None
    password = secret(config, environ, sn.password_env, sn.password_file, "servicenow password")
    if password is None:
        raise ConfigError(str(config.source), [f"servicenow: enabled but no password: set ${sn.password_env} "
                                               "or servicenow.password_file"])
    client_secret = None
    if sn.client_id:
        client_secret = secret(config, environ, sn.client_secret_env, sn.client_secret_file, "oauth client secret")
        if client_secret is None:
            raise ConfigError(str(config.source), [f"servicenow.client_id is set but no secret: set "
                                                   f"${sn.client_secret_env} or servicenow.client_secret_file"])
    from integrations.servicenow.client import CircuitBreaker, Credentials, ServiceNowClient
    from integrations.servicenow.tickets import Tickets
    client = ServiceNowClient(sn.url, Credentials(sn.user, password, sn.client_id or None, client_secret),
                              timeout=sn.timeout.total_seconds(), retries=sn.retries, page_size=sn.page_size,
                              breaker=CircuitBreaker(sn.breaker_threshold, sn.breaker_cooldown.total_seconds()))
    return Tickets(client, target_field=sn.target_field, role_field=sn.role_field)


def build_webhook(config: Config, environ: Mapping[str, str]) -> Webhook | None:
    n = config.settings.notify
    url = secret(config, environ, n.webhook_url_env, n.webhook_url_file, "webhook url")
    if not url:
        return None
    key = secret(config, environ, n.webhook_secret_env, n.webhook_secret_file, "webhook signing secret")
    if not key:
        logging.getLogger("jit.notify").warning(
            "webhook messages are unsigned: a receiver cannot tell them from forged ones; set $%s or "
            "notify.webhook_secret_file", n.webhook_secret_env)
    from integrations.notify import Webhook
    return Webhook(url, timeout=n.timeout.total_seconds(), secret=key or None)


def build(config: Config, *, clock: Clock = system_clock, backends: dict[str, Backend] | None = None,
          migrate: bool = True, environ: Mapping[str, str] | None = None) -> Services:
    logging.basicConfig(level=config.settings.logging.level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "apscheduler", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The HTTP clients' own INFO and DEBUG lines carry what must never reach a log: httpx logs each
    # request's URL (a webhook URL is a secret), httpcore and urllib3 headers (the Authorization of
    # ServiceNow's basic auth or bearer token) and bodies (OAuth's client secret, tokens). Pinned to
    # WARNING whatever [logging] level is configured; their failures still reach the logs, as ours.
    for secretive in ("httpx", "httpcore", "urllib3", "requests_oauthlib", "oauthlib"):
        logging.getLogger(secretive).setLevel(logging.WARNING)
    check_trusted(config.policy_path, "paths.policy")
    policy = load_policy(config.policy_path)
    environ = os.environ if environ is None else environ
    backends = backends if backends is not None else build_backends(config, policy, environ)
    store = Store(config.database_url)
    if migrate:
        store.migrate()
    host_reports = HostReports(store, clock)
    agent = backends.get("agent")
    if agent is not None and hasattr(agent, "attach"):
        agent.attach(host_reports)  # type: ignore[union-attr]
    directory = build_directory(config, backends)
    tickets = build_tickets(config, environ)
    webhook = build_webhook(config, environ)
    sn = config.settings.servicenow
    gateway = TicketGateway(tickets) if tickets else None
    lifecycle = Lifecycle(store, policy, directory, backends, clock, config.settings.engine, tickets=gateway,
                          outbox=OutboxSettings(servicenow=bool(tickets and sn.write_back), webhook=webhook is not None,
                                                create_change=bool(tickets and sn.create_missing_change)))
    sync = TicketSync(store, lifecycle, tickets, gateway, clock, sn.initial_lookback) if tickets else None
    deliverer = Deliverer(store, clock, tickets=tickets, webhook=webhook, lease=config.settings.engine.lease) \
        if (tickets or webhook) else None
    reconciler = Reconciler(store, backends, clock)
    engine = Engine(lifecycle, config.settings.engine, clock, sync=sync, deliverer=deliverer, reconciler=reconciler,
                    sync_interval=sn.sync_interval, expiry_warning=config.settings.notify.expiry_warning,
                    alert=(lambda text: webhook.send({"text": text, "event": "engine.alert"})) if webhook else None)
    return Services(config, policy, store, directory, backends, lifecycle, engine, clock, tickets, sync, deliverer,
                    reconciler, host_reports)
