"""The one place that chooses concrete parts and wires them: CLI, console and tests build here."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping

from app.clock import Clock, system_clock
from app.config import Config, ConfigError, secret
from app.engine import Engine
from app.identity import StaticDirectory
from app.lifecycle import Lifecycle, OutboxSettings
from app.outbox import Deliverer
from app.reconcile import Reconciler
from app.store import Store
from app.sync import TicketSync
from app.tickets import TicketGateway
from integrations.base import Backend
from integrations.notify import Webhook
from integrations.servicenow.client import CircuitBreaker, Credentials, ServiceNowClient
from integrations.servicenow.tickets import Tickets
from integrations.sudo import SudoBackend
from policies.loader import load_policy
from policies.model import PolicySet


@dataclass
class Services:
    config: Config
    policy: PolicySet
    store: Store
    directory: StaticDirectory
    backends: dict[str, Backend]
    lifecycle: Lifecycle
    engine: Engine
    clock: Clock
    tickets: Tickets | None = None
    sync: TicketSync | None = None
    deliverer: Deliverer | None = None
    reconciler: Reconciler | None = None

    def close(self) -> None:
        self.engine.stop()
        if self.tickets is not None:
            self.tickets.client.close()
        self.store.dispose()


def build_backends(config: Config) -> dict[str, Backend]:
    sudo = config.settings.backends.sudo
    return {"sudo": SudoBackend(config.path(sudo.sudoers_dir), visudo=sudo.visudo, cvtsudoers=sudo.cvtsudoers,
                                timestamp_dir=config.path(sudo.timestamp_dir) if sudo.timestamp_dir else None,
                                runas=sudo.runas)}


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
    client = ServiceNowClient(sn.url, Credentials(sn.user, password, sn.client_id or None, client_secret),
                              timeout=sn.timeout.total_seconds(), retries=sn.retries, page_size=sn.page_size,
                              breaker=CircuitBreaker(sn.breaker_threshold, sn.breaker_cooldown.total_seconds()))
    return Tickets(client, target_field=sn.target_field, role_field=sn.role_field)


def build_webhook(config: Config, environ: Mapping[str, str]) -> Webhook | None:
    n = config.settings.notify
    url = secret(config, environ, n.webhook_url_env, n.webhook_url_file, "webhook url")
    return Webhook(url, timeout=n.timeout.total_seconds()) if url else None


def build(config: Config, *, clock: Clock = system_clock, backends: dict[str, Backend] | None = None,
          migrate: bool = True, environ: Mapping[str, str] | None = None) -> Services:
    logging.basicConfig(level=config.settings.logging.level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    policy = load_policy(config.policy_path)
    backends = backends if backends is not None else build_backends(config)
    store = Store(config.database_url)
    if migrate:
        store.migrate()
    directory = StaticDirectory.from_config(config)
    environ = os.environ if environ is None else environ
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
                    sync_interval=sn.sync_interval, expiry_warning=config.settings.notify.expiry_warning)
    return Services(config, policy, store, directory, backends, lifecycle, engine, clock, tickets, sync, deliverer,
                    reconciler)
