"""The OpenAPI 3.1 document, generated from the route table and the pydantic wire models.

It states every rule the service enforces that a JSON Schema can express (id formats, lengths, NUL bans,
artifact path rules, integer ranges), so a client generated from it never sends what the service
refuses; what it cannot express (the filter grammar, which page tokens were issued, cross-field rules
like equal column lengths) is said in descriptions and answered with a 400/422 naming the field.
"""

from __future__ import annotations

import re
from typing import Any

import pydantic
from pydantic.json_schema import models_json_schema

from kiseki import __version__
from kiseki.models import NO_NUL_PATTERN, ErrorResponse
from kiseki_server.auth.policy import Access
from kiseki_server.routing import PATH_PARAMETERS, Route

_TEXT = {"type": "string", "pattern": NO_NUL_PATTERN}
"""A path parameter routing.PATH_PARAMETERS does not know (add its rules there)."""

_ERRORS = {
    "400": "Invalid input",
    "401": "No valid credential (auth on)",
    "403": "The credential's scope or the user's permission falls short (auth on), a refused signature "
    "(local artifact URLs), or a host/origin this service does not serve",
    "404": "Not found",
    "409": "Conflict",
    "413": "Body too large",
    "415": "A request body that is not JSON",
    "422": "Invalid field",
    "429": "Too many failed sign-ins from this address",
    "503": "A backing service (Postgres, artifact storage) is unavailable",
}


def build(routes: list[Route]) -> dict[str, Any]:
    models: set[type[pydantic.BaseModel]] = {ErrorResponse}
    for route in routes:
        models.update(m for m in (route.body, route.response) if m is not None)
    keyed, defs = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    _key_patterns_as_property_names(defs)

    def ref(model: type[pydantic.BaseModel]) -> dict[str, Any]:
        return {"content": {"application/json": {"schema": keyed[(model, "validation")]}}}

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        params = [
            {"name": name, "in": "path", "required": True, "schema": PATH_PARAMETERS.get(name, _TEXT)}
            for name in re.findall(r"{(\w+)}", route.path)
        ]
        params += [
            {
                "name": q.name,
                "in": "query",
                "required": q.required,
                "description": q.description,
                "schema": q.schema(),
            }
            for q in route.query
        ]
        responses: dict[str, Any] = {
            str(route.status): {"description": "OK", **(ref(route.response) if route.response else {})}
        }
        responses.update(
            {code: {"description": text, **ref(ErrorResponse)} for code, text in _ERRORS.items()}
        )
        operation: dict[str, Any] = {
            "summary": route.summary,
            **_access(route.access),
            "operationId": f"{route.handler.__module__.rsplit('.', 1)[-1]}_{route.handler.__name__}",
            "parameters": params,
            "responses": responses,
        }
        if route.body is not None:
            operation["requestBody"] = {"required": True, **ref(route.body)}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kiseki",
            "version": __version__,
            "description": "Experiment tracking: experiments, runs, params, tags, metrics.",
        },
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {}), "securitySchemes": _SECURITY_SCHEMES},
        "security": _ANY_CREDENTIAL,
    }


_SECURITY_SCHEMES = {
    "token": {"type": "http", "scheme": "bearer", "description": "An API token (ksk_…)."},
    "password": {"type": "http", "scheme": "basic", "description": "User name and password, or a token."},
    "session": {"type": "apiKey", "in": "cookie", "name": "kiseki_session", "description": "Browser."},
}
_ANY_CREDENTIAL: list[dict[str, list[str]]] = [{"token": []}, {"password": []}, {"session": []}]


def _access(access: Access | None) -> dict[str, Any]:
    """What the route requires when auth is on, as `security` and the `x-kiseki-access` extension."""
    if access is None:
        return {
            "security": [{}],
            "description": "Open: no credential needed (the URL's signature is the credential).",
            "x-kiseki-access": None,
        }
    return {
        "security": _ANY_CREDENTIAL,
        "description": access.describe(),
        "x-kiseki-access": {
            "scope": access.scope.label,
            "permission": access.level.label if access.level is not None else None,
            "experiment_from": access.target,
            "admin_only": access.admin_only,
        },
    }


def _key_patterns_as_property_names(node: Any) -> None:
    """pydantic writes the pattern of a dict's key type as `patternProperties`, which leaves keys that
    do not match it unconstrained; the service refuses them, so the pattern goes to `propertyNames`."""
    if isinstance(node, dict):
        patterns = node.get("patternProperties")
        if isinstance(patterns, dict) and len(patterns) == 1 and "additionalProperties" not in node:
            ((pattern, values),) = patterns.items()
            node["propertyNames"] = {**node.get("propertyNames", {}), "pattern": pattern}
            node["additionalProperties"] = values
            del node["patternProperties"]
        for value in node.values():
            _key_patterns_as_property_names(value)
    elif isinstance(node, list):
        for value in node:
            _key_patterns_as_property_names(value)
