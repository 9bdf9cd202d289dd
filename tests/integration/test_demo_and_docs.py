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
