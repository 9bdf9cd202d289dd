"""Read policy files and turn every problem into one line with its key path."""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from policies.model import PolicySet, key_text, reference_problems


class PolicyError(Exception):
    """A policy file is unusable. ``problems`` holds one ``key.path: reason`` per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def validation_problems(exc: ValidationError) -> list[str]:
    """One ``key.path: message`` per pydantic error."""
    out = []
    for err in exc.errors(include_url=False):
        path = ".".join(key_text(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
        out.append(f"{path}: {message}")
    return out


def parse_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise PolicyError(str(path), ["file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(str(path), [f"not valid TOML: {exc}"]) from None
    except UnicodeDecodeError as exc:  # tomllib decodes the bytes itself and lets this through
        raise PolicyError(str(path), [f"not valid UTF-8 (byte {exc.start}): TOML files are UTF-8"]) from None
    except OSError as exc:
        raise PolicyError(str(path), [f"cannot read: {exc.strerror}"]) from None


def build(model: type[BaseModel], data: dict[str, Any], source: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(source, validation_problems(exc)) from None


def load_policy(path: str | Path) -> PolicySet:
    """Load and validate one policy file; raise ``PolicyError`` listing every problem."""
    path = Path(path)
    data = parse_toml(path)
    references = reference_problems(data)
    try:
        policy = build(PolicySet, data, str(path))
    except PolicyError as exc:
        raise PolicyError(exc.source, exc.problems + references) from None
    if references:
        raise PolicyError(str(path), references)
    return policy
