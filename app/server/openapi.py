"""``/v1/openapi.json``: the API described as OpenAPI 3.1, generated from the route table and the
body models themselves (pydantic writes JSON Schema 2020-12, which OpenAPI 3.1 uses)."""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable

from app.server.routes import Route

ERROR = {"type": "object", "required": ["error"], "additionalProperties": False, "properties": {"error": {
    "type": "object", "required": ["rule", "message", "field"], "additionalProperties": False,
    "properties": {"rule": {"type": "string"}, "message": {"type": "string"},
                   "field": {"type": ["string", "null"]}}}}}
ERRORS = {"400": "Malformed body (not a JSON object)", "401": "The caller could not be authenticated",
          "403": "Refused by a rule or check (named in rule)", "404": "No such request",
          "409": "Someone else changed it first, or it is not in a state that allows this",
          "413": "Body too large", "422": "A field is wrong (named in field); nothing was written",
          "429": "Too many calls (see Retry-After)", "503": "The database is unavailable"}
ID = {"name": "id", "in": "path", "required": True,
      "schema": {"type": "string", "pattern": "^(REQ-)?[0-9]{1,10}$"}, "description": "REQ-42 or 42"}
HOST = {"name": "host", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 253},
        "description": "the host's name (its uname -n); only that host's agent may use it"}
NUMBER = {"name": "number", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64},
          "description": "a ServiceNow ticket number, e.g. CHG0000001"}


def document(routes: Iterable[Route]) -> dict[str, Any]:
    return _document(tuple(routes))


@lru_cache(maxsize=4)
def _document(routes: tuple[Route, ...]) -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR}
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {"operationId": r.operation_id, "summary": r.summary, "responses": {
            str(r.status): {"description": r.summary, "content": {r.content: {"schema": {}}}},
            **{code: {"description": why, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}} for code, why in ERRORS.items()}}}
        params = [ID] if "{id}" in r.path else [NUMBER] if "{number}" in r.path else \
            [HOST] if "{host}" in r.path else []
        if r.query is not None:
            schema = r.query.model_json_schema()
            params += [{"name": name, "in": "query", "required": name in schema.get("required", ()),
                        "schema": prop} for name, prop in schema["properties"].items()]
        if params:
            op["parameters"] = params
        if r.body is not None:
            schema = r.body.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[r.body.__name__] = schema
            op["requestBody"] = {"required": False, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{r.body.__name__}"}}}}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "jit server", "version": "1",
                 "description": "Just-in-time privileged access. On the Unix socket the caller is the "
                                "uid the kernel reports; over TLS a client certificate or an OIDC bearer "
                                "token. The caller is never taken from a header or the body."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "clientCertificate": {"type": "mutualTLS"},
            "oidc": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
        "security": [{"clientCertificate": []}, {"oidc": []}],
    }
