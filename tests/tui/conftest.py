"""Fixtures for the console's tests: a sandbox world per test, closed afterwards; async tests run on asyncio."""
from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest

from console_world import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = make_world(tmp_path)
    yield w
    w.services.close()


@pytest.fixture
def story_world(tmp_path: Path) -> World:
    from console_world import story

    w = make_world(tmp_path, fake_backend=True)
    story(w)
    yield w
    w.services.close()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests (Pilot) in a fresh event loop: no asyncio plugin needed for this directory."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
    return True
