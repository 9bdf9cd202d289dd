"""The demo's sandbox deletes only what it made: `jit demo --stop` and `jit demo --dir` on a
directory the demo did not write are refused, and nothing there is touched."""
from __future__ import annotations

import io

import pytest

from app.cli.main import main
from app.dev.demo_sandbox import MARKER, DemoError, DemoSandbox


def test_stop_refuses_a_directory_the_demo_did_not_make(tmp_path):
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "jit.toml").write_text("# someone's own config\n")
    with pytest.raises(DemoError, match="not a demo sandbox"):
        DemoSandbox(keep).stop(io.StringIO())
    assert (keep / "jit.toml").read_text() == "# someone's own config\n"
    err = io.StringIO()
    assert main(["demo", "--stop", "--dir", str(keep)], {}, io.StringIO(), err) == 2
    assert "demo: " in err.getvalue() and keep.exists()


def test_up_refuses_a_directory_with_other_files_or_a_foreign_config(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(DemoError, match="exists and is not a demo sandbox"):
        DemoSandbox(busy).up(io.StringIO(), seed=lambda config: None)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "jit.toml").write_text("# not the demo's\n")
    with pytest.raises(DemoError, match="that `jit demo` did not write"):
        DemoSandbox(foreign).up(io.StringIO(), seed=lambda config: None)
    assert sorted(p.name for p in foreign.iterdir()) == ["jit.toml"] and not (foreign / MARKER).exists()


def test_stop_of_nothing_says_so(tmp_path):
    out = io.StringIO()
    DemoSandbox(tmp_path / "none").stop(out)
    assert "no demo sandbox at" in out.getvalue()
