"""The OpenAPI 3.1 document, generated from the route table and the pydantic wire models."""

from __future__ import annotations

import re
from typing import Any

import pydantic
from pydantic.json_schema import models_json_schema

from kiseki import __version__
from kiseki.models import ErrorResponse
from kiseki_server.routing import Route

_ERRORS = {
    "400": "Invalid input",
    "403": "Refused signature (local artifact URLs)",
    "404": "Not found",
    "409": "Conflict",
    "413": "Body too large",
    "422": "Invalid field",
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

    def ref(model: type[pydantic.BaseModel]) -> dict[str, Any]:
        return {"content": {"application/json": {"schema": keyed[(model, "validation")]}}}

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", route.path)
        ]
        params += [
            {
                "name": q.name,
                "in": "query",
                "required": q.required,
                "description": q.description,
                "schema": {"type": q.type},
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
        "components": {"schemas": defs.get("$defs", {})},
    }
