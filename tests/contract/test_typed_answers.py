"""Every success answer in the live OpenAPI document has a typed schema (issue 22, ADR 0025).

A 2xx JSON answer must name a msgspec Struct (a ``$ref`` to an object with properties), a
list of them, or a ``oneOf`` of them; ``{}`` or a bare ``object`` with
``additionalProperties`` is what Litestar shows for ``dict[str, Any]`` and fails. Answers that
are not JSON are listed below by path and must say so with their media type.
"""

from __future__ import annotations

from typing import Any

from tests.contract.test_openapi_lint import operations, spec, spec_file

__all__ = ["spec", "spec_file"]  # the module's fixtures, shared

PROXY_PASSTHROUGH = {  # the instance's own bytes (application/octet-stream)
    "/api/v1/gpu/proxy",
    "/api/v1/gpu/proxy/pool",
    "/api/v1/gpu/proxy/pool/{path}",
    "/api/v1/gpu/proxy/{instance_id}",
    "/api/v1/gpu/proxy/{instance_id}/{path}",
}
JSON = "application/json"
NOT_JSON = {"/metrics": "text/plain"} | dict.fromkeys(PROXY_PASSTHROUGH, "application/octet-stream")


def _typed(schema: dict[str, Any], components: dict[str, Any]) -> bool:
    if "$ref" in schema:
        target = components[schema["$ref"].rsplit("/", 1)[-1]]
        return _typed(target, components)
    if "oneOf" in schema or "anyOf" in schema:
        branches = schema.get("oneOf", schema.get("anyOf", []))
        return bool(branches) and all(_typed(b, components) for b in branches)
    if schema.get("type") == "array":
        return _typed(schema.get("items", {}), components)
    return schema.get("type") == "object" and bool(schema.get("properties"))


def untyped_answers(spec: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(method, path, status)`` of each 2xx JSON answer without a typed schema."""
    components = spec["components"]["schemas"]
    found = []
    for path, method, op in operations(spec):
        for status, response in op["responses"].items():
            if not status.startswith("2") or path.startswith("/schema") or path in NOT_JSON:
                continue
            content = response.get("content", {})
            json_schemas = [v.get("schema", {}) for k, v in content.items() if "json" in k]
            if not json_schemas or not all(_typed(s, components) for s in json_schemas):
                found.append((method, path, status))
    return found


def test_every_success_answer_has_a_typed_schema(spec: dict[str, Any]) -> None:
    assert untyped_answers(spec) == []


def test_the_answers_left_out_are_not_json(spec: dict[str, Any]) -> None:
    methods = {path: [op for p, _, op in operations(spec) if p == path] for path in NOT_JSON}
    for path, media in NOT_JSON.items():
        assert methods[path], path  # still served: otherwise drop it from the list
        for op in methods[path]:
            for status, response in op["responses"].items():
                if status.startswith("2"):
                    kinds = list(response.get("content", {}))
                    assert kinds, (path, status)
                    assert all(k.startswith(media) for k in kinds), (path, status, kinds)


def _answering(schema: dict[str, Any] | None, status: str = "200") -> dict[str, Any]:
    response = (
        {"description": "no body"} if schema is None else {"content": {JSON: {"schema": schema}}}
    )
    return {"get": {"responses": {status: response}}}


def test_the_check_refuses_free_form_answers() -> None:
    free = {"type": "object", "additionalProperties": {}}
    typed = {"type": "object", "properties": {"a": {"type": "string"}}}
    doc = {
        "components": {"schemas": {"Free": free, "Typed": typed}},
        "paths": {
            "/a": _answering({}),
            "/b": _answering(free),
            "/c": _answering(None, "201"),
            "/d": _answering({"oneOf": [{"$ref": "#/components/schemas/Typed"}, free]}),
            "/e": _answering({"type": "array", "items": {}}),
            "/f": _answering({"$ref": "#/components/schemas/Free"}),
            "/ok": _answering({"$ref": "#/components/schemas/Typed"}),
            "/oks": _answering({"type": "array", "items": {"$ref": "#/components/schemas/Typed"}}),
        },
    }
    assert [path for _, path, _ in untyped_answers(doc)] == ["/a", "/b", "/c", "/d", "/e", "/f"]
