"""The one place that chooses concrete parts and wires them: CLI, console and tests build here."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

from app.clock import Clock, system_clock
from app.config import Config
from app.engine import Engine
from app.identity import StaticDirectory
from app.lifecycle import Lifecycle
from app.store import Store
from integrations.base import Backend
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

    def close(self) -> None:
        self.engine.stop()
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


def build(config: Config, *, clock: Clock = system_clock, backends: dict[str, Backend] | None = None,
          migrate: bool = True) -> Services:
    logging.basicConfig(level=config.settings.logging.level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    policy = load_policy(config.policy_path)
    backends = backends if backends is not None else build_backends(config)
    store = Store(config.database_url)
    if migrate:
        store.migrate()
    directory = StaticDirectory.from_config(config)
    lifecycle = Lifecycle(store, policy, directory, backends, clock, config.settings.engine)
    engine = Engine(lifecycle, config.settings.engine, clock)
    return Services(config, policy, store, directory, backends, lifecycle, engine, clock)
