"""`make demo` keeps working, config.example.toml stays valid and complete, README leads with the two commands."""
from __future__ import annotations

import io
import tomllib
from pathlib import Path

from app.config import Settings, load_config
from app.cli.main import main
from app.dev.demo import run_demo

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_every_step_as_narrated(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_demo(out, tmp_path / "demo", cli=main) == 0, out.getvalue()
    text = out.getvalue()
    assert "demo finished: all steps behaved as expected" in text
    assert "never approve their own request" in text and "NOTAFTER=" in text and "parsed OK" in text
    assert "audit chain ok" in text


def test_example_config_is_valid_and_names_every_key() -> None:
    path = ROOT / "config.example.toml"
    config = load_config(path)
    assert "identity" not in tomllib.loads(path.read_text())  # allow_impersonation is gone
    data = tomllib.loads(path.read_text())

    def keys(model, prefix=""):
        for name, field in model.model_fields.items():
            if name == "identity":
                continue  # only there to refuse the old allow_impersonation with a sentence
            sub = field.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields") and name != "people":
                yield from keys(sub, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    def present(dotted):
        node = data
        for part in dotted.split("."):
            if part not in node:
                return False
            node = node[part]
        return True

    missing = [k for k in keys(Settings) if not present(k) and k != "directory.people"]
    assert missing == []


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text().split("##")[0]
    assert "make demo" in head and "make test" in head
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_trying_it_by_hand_works_as_written(tmp_path: Path) -> None:
    """The section's commands, extracted from README and run by bash as a reader would (from the
    repository, with its .venv), each result checked."""
    import os
    import re
    import subprocess
    import pytest
    if not (ROOT / ".venv" / "bin" / "jit").exists():
        pytest.skip("the README's commands use .venv/bin/jit, and this checkout has no .venv (make test makes it)")
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Trying it by hand"):]
    script = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    env = {k: v for k, v in os.environ.items() if k not in ("JIT_CONFIG", "JIT_USER", "JIT_SERVER")}
    env["TMPDIR"] = str(tmp_path)  # where the reader's mktemp -d makes the sandbox: this test can look inside
    proc = subprocess.run(["bash", "-e", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    expected = ["REQ-1 submitted; needs dual approval from managers and system-owners",
                "REQ-1: approved by bob; 1 of 2 approvals", "REQ-1: approved by carol; approvals complete (2 of 2).",
                "alice web-prod-01 = (root) NOTBEFORE=", "REQ-1 released"]
    positions = [out.index(line) for line in expected]  # each there (index raises otherwise), in this order
    assert positions == sorted(positions), out
    [sandbox] = [d for d in tmp_path.iterdir() if (d / "jit.toml").exists()]
    assert list((sandbox / "sudoers.d").iterdir()) == []  # released: the drop-in is gone
    assert "serving on unix:" in proc.stderr + out and not (sandbox / "jit.sock").exists()  # the server ended
