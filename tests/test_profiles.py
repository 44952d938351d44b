"""The conformance resources in profiles/ are valid and agree with the running server."""

from __future__ import annotations

import json
from pathlib import Path

from careplan_fhir.fhir.models import SERVED_TYPES, validate_resource
from careplan_fhir.fhir.search_parameters import parameters_for

PROFILES = Path(__file__).parent.parent / "profiles"


def load(name: str) -> dict[str, object]:
    return json.loads((PROFILES / name).read_text())  # type: ignore[no-any-return]


def test_every_profile_resource_is_valid() -> None:
    files = sorted(PROFILES.glob("*.json"))
    assert files
    for path in files:
        validate_resource(json.loads(path.read_text()))


def test_each_custom_search_parameter_is_published() -> None:
    custom = [
        param
        for resource_type in SERVED_TYPES
        for param in parameters_for(resource_type).values()
        if param.custom
    ]
    assert {(p.resource_type, p.name) for p in custom} == {("Task", "due-date"), ("Flag", "status")}
    for param in custom:
        published = load(f"SearchParameter-{param.resource_type}-{param.name}.json")
        assert published["code"] == param.name
        assert published["base"] == [param.resource_type]
        assert published["type"] == param.type
        assert published["expression"] == param.expression
        assert str(published["url"]).endswith(
            f"/SearchParameter/{param.resource_type}-{param.name}"
        )


def test_every_structure_definition_is_a_valid_constraint_we_ship() -> None:
    from careplan_fhir.fhir.profiles import PROFILE_BASE, known_profiles

    definitions = sorted(PROFILES.glob("StructureDefinition-*.json"))
    assert definitions
    for path in definitions:
        definition = json.loads(path.read_text())
        validate_resource(definition)
        assert definition["fhirVersion"] == "4.0.1"
        assert definition["derivation"] == "constraint"
        assert definition["kind"] == "resource"
        assert definition["url"] == PROFILE_BASE + definition["id"]
        assert path.name == f"StructureDefinition-{definition['id']}.json"
        assert definition["url"] in known_profiles()
