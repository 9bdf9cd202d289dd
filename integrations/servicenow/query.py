"""ServiceNow encoded queries (``sysparm_query``): parse once, then evaluate against records.

Pure: no I/O and no knowledge of tables. The caller supplies a *getter* that returns a
field's string value, or ``None`` when the field does not exist; a condition on a field
that does not exist is dropped, as ServiceNow does by default (so ``nosuchfield=x``
matches everything).

Grammar, as ServiceNow encodes it:

* ``a^b``   AND;  ``a^ORb``  OR with the previous condition (binds tighter than ``^``);
  ``q1^NQq2``  OR between whole queries.  So ``a^b^ORc^NQd`` is ``(a AND (b OR c)) OR d``.
* ``^^`` is a literal ``^`` inside a value; a trailing ``^EQ`` marker is ignored.
* A condition is ``field`` + operator + value. ``field`` is ``[A-Za-z0-9_.]+`` and may be
  dot-walked (``assigned_to.user_name``); the operator is the longest known one at the
  leftmost position where one starts, so values may contain ``=`` or operator words.
* ``ORDERBYfield`` / ``ORDERBYDESCfield`` sort (several allowed, first is primary, stable).

Semantics of the operators (values are strings; ``LIKE``/``STARTSWITH``/``ENDSWITH`` ignore
case, ``=``/``IN`` do not): ``<``, ``<=``, ``>``, ``>=`` and ``BETWEEN lo@hi`` (inclusive)
compare numerically when both sides are numbers, else as strings (right for
``YYYY-MM-DD HH:MM:SS``); an empty field never satisfies them. A value written as
``javascript:gs.dateGenerate('2026-01-31','23:59:59')`` (what ServiceNow's list filter
emits) is read as ``2026-01-31 23:59:59``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable, Sequence, TypeVar

T = TypeVar("T")
Getter = Callable[[str], "str | None"]
"""Field name -> string value, or ``None`` when the field does not exist."""

OPERATORS: tuple[str, ...] = tuple(sorted(
    ("=", "!=", "LIKE", "NOT LIKE", "STARTSWITH", "ENDSWITH", "IN", "NOT IN", "ISEMPTY",
     "ISNOTEMPTY", "<", "<=", ">", ">=", "BETWEEN"),
    key=len, reverse=True))
_NO_VALUE = frozenset({"ISEMPTY", "ISNOTEMPTY"})
_FIELD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_DATE_GENERATE = re.compile(r"javascript:gs\.dateGenerate\('([^']*)',\s*'([^']*)'\)")
_ESCAPED_CARET = "\x00"


class QueryError(ValueError):
    """Raised by :func:`parse_condition` for text that is not a condition."""


class UnsupportedQuery(QueryError):
    """An operator or value ServiceNow has and this module does not implement: evaluating it as
    anything (dropping it, splitting it at an operator inside it) would match the wrong records,
    so :func:`parse` raises it rather than guess."""


# ServiceNow's operators (and value forms) not implemented here, longest first
UNSUPPORTED = ("DOES NOT CONTAIN", "RELATIVEGE", "RELATIVELE", "RELATIVEGT", "RELATIVELT", "RELATIVEEE",
               "CHANGESFROM", "CHANGESTO", "VALCHANGES", "INSTANCEOF", "EMPTYSTRING", "MORETHAN", "LESSTHAN",
               "NSAMEAS", "DATEPART", "CONTAINS", "ANYTHING", "DYNAMIC", "SAMEAS", "GT_FIELD", "LT_FIELD",
               "GT_OR_EQUALS_FIELD", "LT_OR_EQUALS_FIELD", "BETWEEN_FIELD", "NOTONToday")


@dataclass(frozen=True)
class Condition:
    """One ``field OP value`` test."""

    field: str
    op: str
    value: str

    def evaluate(self, get: Getter) -> bool | None:
        """True/False, or ``None`` when the field does not exist (the condition is dropped)."""
        actual = get(self.field)
        if actual is None:
            return None
        return _test(self.op, actual, self.value)


@dataclass(frozen=True)
class OrderBy:
    """One sort key: ``ORDERBYfield`` (ascending) or ``ORDERBYDESCfield``."""

    field: str
    descending: bool = False


@dataclass(frozen=True)
class Query:
    """A parsed encoded query.

    ``groups`` are the ``^NQ``-separated queries (OR-ed); each is a tuple of AND-ed terms,
    and each term a tuple of ``^OR``-ed conditions.
    """

    groups: tuple[tuple[tuple[Condition, ...], ...], ...] = ()
    order_by: tuple[OrderBy, ...] = ()

    def matches(self, get: Getter) -> bool:
        """Whether the record behind ``get`` satisfies the query (an empty query matches all)."""
        return not self.groups or any(_group_matches(group, get) for group in self.groups)

    def filter(self, items: Iterable[T], get: Callable[[T, str], str | None]) -> list[T]:
        """The items that match, in their original order."""
        return [item for item in items if self.matches(lambda name, item=item: get(item, name))]

    def order(self, items: Iterable[T], get: Callable[[T, str], str | None]) -> list[T]:
        """The items sorted by the ``ORDERBY`` keys (stable; original order when there are none).

        Empty values sort first, then numbers numerically, then text case-insensitively.
        """
        result = list(items)
        for key in reversed(self.order_by):
            result.sort(key=lambda item: _sort_key(get(item, key.field)), reverse=key.descending)
        return result


def parse(q: str | None) -> Query:
    """Parse an encoded query; unparseable conditions are dropped; an operator ServiceNow has and
    this module does not implement raises ``UnsupportedQuery``."""
    if not q:
        return Query()
    groups: list[tuple[tuple[Condition, ...], ...]] = []
    order_by: list[OrderBy] = []
    terms: list[list[Condition]] = []
    for token in _split(q):
        if token.startswith("NQ"):
            if terms:
                groups.append(tuple(tuple(t) for t in terms))
            terms = []
            token = token[2:]
        if not token or token == "EQ":
            continue
        if token.startswith("ORDERBYDESC"):
            order_by.append(OrderBy(token[len("ORDERBYDESC"):], descending=True))
            continue
        if token.startswith("ORDERBY"):
            order_by.append(OrderBy(token[len("ORDERBY"):]))
            continue
        alternative = token.startswith("OR") and bool(terms)
        try:
            condition = parse_condition(token[2:] if token.startswith("OR") else token)
        except UnsupportedQuery:
            raise
        except QueryError:
            continue
        if alternative:
            terms[-1].append(condition)
        else:
            terms.append([condition])
    if terms:
        groups.append(tuple(tuple(t) for t in terms))
    return Query(tuple(groups), tuple(o for o in order_by if o.field))


def parse_condition(text: str) -> Condition:
    """Split ``fieldOPvalue`` at the leftmost position where a known operator starts."""
    for i in range(1, len(text)):
        if text[i - 1] not in _FIELD_CHARS:
            break
        rest = text[i:]
        for op in UNSUPPORTED:
            if rest.startswith(op):
                raise UnsupportedQuery(f"operator {op} in {text[:80]!r} is not implemented")
        if rest.startswith("ON") and "@" in rest:
            raise UnsupportedQuery(f"operator ON in {text[:80]!r} is not implemented")
        for op in OPERATORS:
            if rest.startswith(op):
                value = "" if op in _NO_VALUE else rest[len(op):]
                value = _DATE_GENERATE.sub(r"\1 \2", value)
                if "javascript:" in value:
                    raise UnsupportedQuery(f"the value of {text[:80]!r} is a script, which is not evaluated here "
                                           "(only gs.dateGenerate)")
                return Condition(text[:i], op, value)
    raise QueryError(f"not a condition: {text!r}")


def _split(q: str) -> list[str]:
    """Split on ``^``, honouring ``^^`` as an escaped caret."""
    return [part.replace(_ESCAPED_CARET, "^") for part in q.replace("^^", _ESCAPED_CARET).split("^")]


def _group_matches(terms: Sequence[Sequence[Condition]], get: Getter) -> bool:
    for alternatives in terms:
        results = [r for r in (c.evaluate(get) for c in alternatives) if r is not None]
        if results and not any(results):
            return False
    return True


def _number(text: str) -> float | None:
    return float(text) if _NUMBER.fullmatch(text.strip()) else None


def _compare(a: str, b: str) -> int:
    """-1/0/1: numeric when both are numbers, else by string."""
    x, y = _number(a), _number(b)
    if x is not None and y is not None:
        return (x > y) - (x < y)
    return (a > b) - (a < b)


@lru_cache(maxsize=64)
def _listed(value: str) -> frozenset[str]:
    """The values of an ``IN`` list, split once per query rather than once per record."""
    return frozenset(v.strip() for v in value.split(","))


def equal_to(condition: Condition) -> frozenset[str] | None:
    """The values a field must equal under ``condition`` (``=`` or ``IN``), else None."""
    if condition.op == "=":
        return frozenset((condition.value,))
    return _listed(condition.value) if condition.op == "IN" else None


def _test(op: str, actual: str, value: str) -> bool:
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    if op in ("LIKE", "NOT LIKE"):
        return (value.casefold() in actual.casefold()) == (op == "LIKE")
    if op == "STARTSWITH":
        return actual.casefold().startswith(value.casefold())
    if op == "ENDSWITH":
        return actual.casefold().endswith(value.casefold())
    if op in ("IN", "NOT IN"):
        return (actual in _listed(value)) == (op == "IN")
    if op == "ISEMPTY":
        return actual == ""
    if op == "ISNOTEMPTY":
        return actual != ""
    if actual == "":
        return False
    if op == "BETWEEN":
        lo, sep, hi = value.partition("@")
        return bool(sep) and _compare(actual, lo) >= 0 and _compare(actual, hi) <= 0
    c = _compare(actual, value)
    return {"<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0}[op]


def _sort_key(value: str | None) -> tuple[int, float, str]:
    if not value:
        return (0, 0.0, "")
    number = _number(value)
    return (1, number, "") if number is not None else (2, 0.0, value.casefold())
