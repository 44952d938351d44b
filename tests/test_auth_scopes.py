"""SMART App Launch v2 scope parsing, table-driven from the specification's own examples.

Rows quote https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html (2.2.0): the
Quick Start, the patient-, user- and system-level example tables, "Scope Equivalence", the
granular-scope and experimental-feature examples, the wildcard "Granted Scope" table and the
"Extensibility" examples.
"""

from __future__ import annotations

import pytest

from careplan_fhir.auth.scopes import PERMISSIONS, Scope, ScopeSet, parse_scope, parse_scopes

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
VITALS = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"


def _grants(scope_text: str) -> set[tuple[str, str, str]]:
    """Every (context, type, permission) the text grants, for the types used in these tables."""
    scopes = parse_scopes(scope_text)
    types = ("Observation", "Patient", "Appointment", "Encounter", "AllergyIntolerance", "Goal")
    return {
        (context, resource_type, permission)
        for resource_type in types
        for permission in PERMISSIONS
        for context in ("patient", "user", "system")
        if scopes.allows(resource_type, permission, contexts={context}, include_granular=True)
    }


# (scope as written in the spec, context, type, letters it grants)
SPEC_RESOURCE_SCOPES = [
    # Quick Start
    ("patient/*.rs", "patient", "*", "rs"),
    ("user/*.cruds", "user", "*", "cruds"),
    # Patient-specific scopes
    ("patient/Observation.rs", "patient", "Observation", "rs"),
    ("patient/Patient.r", "patient", "Patient", "r"),
    ("patient/Observation.c", "patient", "Observation", "c"),
    ("patient/*.cruds", "patient", "*", "cruds"),
    # User-level scopes
    ("user/Observation.rs", "user", "Observation", "rs"),
    ("user/Appointment.cruds", "user", "Appointment", "cruds"),
    ("user/Patient.rs", "user", "Patient", "rs"),
    # System-level scopes
    ("system/Observation.rs", "system", "Observation", "rs"),
    ("system/*.rs", "system", "*", "rs"),
    ("system/Encounter.cud", "system", "Encounter", "cud"),
    # "to convey support for creating and updating observations"
    ("patient/Observation.cu", "patient", "Observation", "cu"),
    # Wildcard "Granted Scope" table
    ("patient/AllergyIntolerance.cruds", "patient", "AllergyIntolerance", "cruds"),
    ("patient/AllergyIntolerance.cud", "patient", "AllergyIntolerance", "cud"),
]


@pytest.mark.parametrize(("text", "context", "resource_type", "letters"), SPEC_RESOURCE_SCOPES)
def test_spec_example_scope_parses(
    text: str, context: str, resource_type: str, letters: str
) -> None:
    scopes = parse_scopes(text)
    assert scopes.other == () and scopes.invalid == ()
    (scope,) = scopes.scopes
    assert scope == Scope(context, resource_type, frozenset(letters))
    assert scope.text == text
    assert str(scope) == text
    assert str(scopes) == text


@pytest.mark.parametrize(("text", "context", "resource_type", "letters"), SPEC_RESOURCE_SCOPES)
def test_spec_example_scope_grants_exactly_its_letters(
    text: str, context: str, resource_type: str, letters: str
) -> None:
    granted = _grants(text)
    types = (
        ("Observation", "Patient", "Appointment", "Encounter", "AllergyIntolerance", "Goal")
        if resource_type == "*"
        else (resource_type,)
    )
    assert granted == {(context, t, p) for t in types for p in letters}


# (scope, (type, permission) it must allow, (type, permission) it must not) straight from the
# spec's notes column
SPEC_NOTES = [
    # "Note also that write access does not imply read access."
    ("patient/Observation.c", ("Observation", "c"), ("Observation", "r")),
    # "Note the difference in capitalization between "patient" the permission type and "Patient"
    # the resource."
    ("patient/Patient.r", ("Patient", "r"), ("Observation", "r")),
    # "Read-only access to observations."
    ("system/Observation.rs", ("Observation", "s"), ("Observation", "u")),
    # "Write access to Encounters."
    ("system/Encounter.cud", ("Encounter", "d"), ("Encounter", "r")),
    # "Full read/search for all resources."
    ("system/*.rs", ("Goal", "s"), ("Goal", "c")),
]


@pytest.mark.parametrize(("text", "allowed", "denied"), SPEC_NOTES)
def test_spec_notes(text: str, allowed: tuple[str, str], denied: tuple[str, str]) -> None:
    scopes = parse_scopes(text)
    assert scopes.allows(*allowed)
    assert not scopes.allows(*denied)


@pytest.mark.parametrize(
    "text",
    ["openid fhirUser", "launch", "launch/patient", "offline_access", "online_access"],
)
def test_quick_start_non_resource_scopes_are_kept_as_written(text: str) -> None:
    scopes = parse_scopes(text)
    assert scopes.other == tuple(text.split())
    assert scopes.scopes == () and scopes.invalid == ()
    assert str(scopes) == text


@pytest.mark.parametrize(
    "word",
    [
        "profile",
        "launch/encounter",
        # "convert the type names to all lowercase (e.g., launch/diagnosticreport)"
        "launch/diagnosticreport",
        "launch/imagingstudy",
        "launch/list?role=https://example.org/med-list-at-home",
        # Extensibility: a full URI, or a name starting with "__"
        "https://ehr.example.org/scopes/profilePhoto.manage",
        "__profilePhoto.manage",
    ],
)
def test_context_identity_and_extension_scopes_go_to_other(word: str) -> None:
    assert parse_scopes(word) == ScopeSet(other=(word,))


def test_extensibility_example_request() -> None:
    scopes = parse_scopes("launch/patient patient/*.rs __profilePhoto.manage")
    assert scopes.other == ("launch/patient", "__profilePhoto.manage")
    assert scopes.scopes == (Scope("patient", "*", frozenset("rs")),)
    assert scopes.contexts() == {"patient"}


@pytest.mark.parametrize(
    ("v1", "v2"),
    [
        ("patient/Observation.read", "patient/Observation.rs"),
        ("patient/Immunization.read", "patient/Immunization.rs"),
        ("user/Appointment.write", "user/Appointment.cud"),
        ("user/*.*", "user/*.cruds"),
        ("patient/*.read", "patient/*.rs"),
        ("system/*.write", "system/*.cud"),
    ],
)
def test_v1_aliases(v1: str, v2: str) -> None:
    (scope,) = parse_scopes(v1).scopes
    assert scope == parse_scope(v2)
    assert scope.text == v1
    assert str(scope) == v2


def test_v1_read_is_not_read_as_letters() -> None:
    # "to prevent misinterpretation ... (e.g., interpreting .read as .rd and granting extraneous
    # delete permissions)"
    scopes = parse_scopes("patient/Observation.read")
    assert scopes.allows("Observation", "r") and scopes.allows("Observation", "s")
    assert not scopes.allows("Observation", "d")


@pytest.mark.parametrize(
    "word",
    [
        "patient/Observation.dus",  # "a request of .dus is not a defined scope request"
        "patient/Observation.sr",  # out of order
        "patient/Observation.rr",  # repeated
        "patient/Observation.x",  # unknown letter
        "patient/Observation.",  # no permission
        "patient/Observation",  # no suffix
        "patient.Immunization.read",  # dot instead of slash
        "Patient/Observation.rs",  # context is case-sensitive
        "patient/observation.rs",  # resource types are capitalised
        "patient/Observation.RS",
        "practitioner/Observation.rs",  # no such context
        "patient/Observation.rs?",  # empty query
        "patient/Observation.rs?category",  # no value
        "patient/Observation.rs?category=",  # empty value
        "patient/Observation.rs?=laboratory",  # empty name
        "patient/Observation.read?category=x|y",  # v1 has no granular scopes
        "patient/**.rs",
        "launch/Patient",  # launch scopes are lower case
        "openid2",
        "read",
    ],
)
def test_malformed_scopes_are_invalid(word: str) -> None:
    scopes = parse_scopes(f"openid {word} patient/Patient.r")
    assert scopes.invalid == (word,)
    assert scopes.other == ("openid",)
    assert scopes.scopes == (Scope("patient", "Patient", frozenset("r")),)
    assert word not in str(scopes).split()


def test_invalid_scopes_grant_nothing() -> None:
    scopes = parse_scopes("patient/Observation.dus patient/Observation.sr")
    assert not any(scopes.allows("Observation", p) for p in PERMISSIONS)


@pytest.mark.parametrize(
    ("text", "query"),
    [
        # "read and search access to laboratory observations but not other observations"
        (f"patient/Observation.rs?category={LAB}", (("category", LAB),)),
        (f"patient/Observation.rs?category={VITALS}", (("category", VITALS),)),
        # Experimental features: a search modifier, chaining
        (
            "patient/Observation.rs?code:in=http://valueset.example.org/ValueSet/diabetes-codes",
            (("code:in", "http://valueset.example.org/ValueSet/diabetes-codes"),),
        ),
        ("patient/Observation.rs?patient.birthdate=1990", (("patient.birthdate", "1990"),)),
        # Several parameters, ANDed
        (
            f"user/Observation.rs?category={VITALS}&date=ge2024-01-01",
            (("category", VITALS), ("date", "ge2024-01-01")),
        ),
    ],
)
def test_granular_scopes(text: str, query: tuple[tuple[str, str], ...]) -> None:
    scopes = parse_scopes(text)
    (scope,) = scopes.scopes
    assert scope.query == query
    assert scope.granular
    assert scope.text == text
    assert str(scope) == text  # written back unchanged
    assert parse_scope(str(scope)) == scope
    # granting() hands the granular scope over with its query; allows() fails closed unless
    # the caller says it applies queries
    assert scopes.granting("Observation", "r") == (scope,)
    assert not scopes.allows("Observation", "r")
    assert scopes.allows("Observation", "r", include_granular=True)
    assert not scopes.allows("Observation", "c", include_granular=True)
    assert not scopes.allows("Condition", "r", include_granular=True)


def test_granular_query_is_percent_decoded_and_reencoded() -> None:
    scope = parse_scope("patient/Observation.rs?code=http://loinc.org%7C8867-4&note=a%26b")
    assert scope is not None
    assert scope.query == (("code", "http://loinc.org|8867-4"), ("note", "a&b"))
    assert str(scope) == "patient/Observation.rs?code=http://loinc.org|8867-4&note=a%26b"
    assert parse_scope(str(scope)) == scope


def test_scope_equivalence() -> None:
    # "Observation.rs expresses access equivalent to Observation.r Observation.s"
    split = parse_scopes("patient/Observation.r patient/Observation.s")
    joined = parse_scopes("patient/Observation.rs")
    assert _grants(str(split)) == _grants(str(joined))
    assert str(split) == "patient/Observation.rs"  # "factored to their shortest form"
    # "patient/Condition.rs patient/AllergyIntolerance.rs" is a union
    union = parse_scopes("patient/Condition.rs patient/AllergyIntolerance.rs")
    assert union.allows("Condition", "s") and union.allows("AllergyIntolerance", "r")
    assert not union.allows("Observation", "r")


def test_merging_keeps_granular_queries_apart() -> None:
    scopes = parse_scopes(
        f"patient/Observation.r?category={LAB} patient/Observation.s?category={LAB} "
        f"patient/Observation.r?category={VITALS} patient/Observation.c"
    )
    assert str(scopes) == (
        f"patient/Observation.rs?category={LAB} patient/Observation.r?category={VITALS} "
        "patient/Observation.c"
    )


def test_granting_filters_by_context() -> None:
    scopes = parse_scopes("patient/Observation.rs user/Observation.r system/*.rs openid")
    assert [s.context for s in scopes.granting("Observation", "r")] == ["patient", "user", "system"]
    assert [s.context for s in scopes.granting("Observation", "s")] == ["patient", "system"]
    assert scopes.granting("Observation", "r", contexts={"user"}) == (
        Scope("user", "Observation", frozenset("r")),
    )
    assert not scopes.allows("Observation", "c")
    assert not scopes.allows("Observation", "s", contexts=["user"])
    assert scopes.contexts() == {"patient", "user", "system"}


def test_wildcard_question_is_only_answered_by_wildcards() -> None:
    # A system-level search across all types asks about "*".
    assert parse_scopes("system/*.s").allows("*", "s")
    assert not parse_scopes("system/Observation.s").allows("*", "s")


def test_empty_and_whitespace() -> None:
    assert parse_scopes("") == ScopeSet()
    assert parse_scopes("  \t ") == ScopeSet()
    assert str(ScopeSet()) == ""
    spaced = parse_scopes("  openid   patient/Patient.r\tpatient/Patient.r ")
    assert spaced.other == ("openid",)
    assert len(spaced.scopes) == 1  # repeated once


def test_scope_rejects_nonsense_construction() -> None:
    with pytest.raises(ValueError, match="context"):
        Scope("practitioner", "Observation", frozenset("r"))
    with pytest.raises(ValueError, match="permissions"):
        Scope("patient", "Observation", frozenset())
    with pytest.raises(ValueError, match="permissions"):
        Scope("patient", "Observation", frozenset("rx"))
    with pytest.raises(ValueError, match="permission must be"):
        Scope("patient", "Observation", frozenset("r")).covers("Observation", "read")


# The spec's wildcard table: a client requests patient/AllergyIntolerance.cruds, and the server
# may grant any of these. narrowed_to(granted) must give what the notes column says.
ALLERGY_GRANTS = [
    ("patient/AllergyIntolerance.cruds", "patient/AllergyIntolerance.cruds"),
    (
        "patient/AllergyIntolerance.rs patient/AllergyIntolerance.cud",
        "patient/AllergyIntolerance.cruds",
    ),
    ("patient/AllergyIntolerance.rs", "patient/AllergyIntolerance.rs"),
    ("patient/AllergyIntolerance.cud", "patient/AllergyIntolerance.cud"),
    ("patient/*.rs", "patient/AllergyIntolerance.rs"),
    ("patient/*.cruds", "patient/AllergyIntolerance.cruds"),
    # "an entirely different scope": narrowing never grants what was not asked for
    ("patient/Observation.rs", ""),
    ("", ""),
    # other contexts do not mix
    ("user/AllergyIntolerance.cruds system/*.cruds", ""),
]


@pytest.mark.parametrize(("allowed", "expected"), ALLERGY_GRANTS)
def test_narrowed_to_wildcard_table(allowed: str, expected: str) -> None:
    requested = parse_scopes("patient/AllergyIntolerance.cruds")
    assert str(requested.narrowed_to(parse_scopes(allowed))) == expected


@pytest.mark.parametrize(
    ("requested", "allowed", "expected"),
    [
        # the token endpoint's case: asked cruds, registered read/search on everything
        ("system/Observation.cruds", "system/*.rs", "system/Observation.rs"),
        # a requested wildcard narrows to the registered types
        ("system/*.rs", "system/Patient.rs system/Goal.r", "system/Patient.rs system/Goal.r"),
        ("system/*.cruds", "system/*.rs", "system/*.rs"),
        ("system/*.rs", "system/*.cruds", "system/*.rs"),
        # a v1 request is granted in v2 form
        ("system/Observation.read", "system/*.cruds", "system/Observation.rs"),
        # one registered scope covering another: the narrower result is dropped
        ("system/*.rs", "system/*.rs system/Observation.r", "system/*.rs"),
        # granular: registered query constrains the request, request queries are kept
        (
            "system/Observation.rs",
            f"system/Observation.rs?category={LAB}",
            f"system/Observation.rs?category={LAB}",
        ),
        (
            f"system/Observation.rs?category={VITALS}",
            "system/*.r",
            f"system/Observation.r?category={VITALS}",
        ),
        (
            f"system/Observation.rs?category={VITALS}",
            f"system/Observation.rs?category={LAB}",
            f"system/Observation.rs?category={VITALS}&category={LAB}",
        ),
        # permissions not shared: nothing
        ("system/Observation.c", "system/*.rs", ""),
        # other scopes need to be allowed too; malformed ones are dropped
        (
            "system/Patient.rs launch openid patient/Observation.sr",
            "system/*.rs openid",
            "system/Patient.rs openid",
        ),
    ],
)
def test_narrowed_to(requested: str, allowed: str, expected: str) -> None:
    narrowed = parse_scopes(requested).narrowed_to(parse_scopes(allowed))
    assert str(narrowed) == expected
    assert narrowed.invalid == ()
    assert narrowed == parse_scopes(expected)  # texts aside, the same scopes


def test_narrowed_to_keeps_the_written_text_when_unchanged() -> None:
    requested = parse_scopes("system/Observation.read system/Patient.cruds")
    narrowed = requested.narrowed_to(parse_scopes("system/*.rs"))
    assert [s.text for s in narrowed.scopes] == ["system/Observation.read", "system/Patient.rs"]


def test_narrowed_to_never_widens() -> None:
    requested = parse_scopes(
        f"patient/*.rs user/Observation.cruds system/Goal.r?lifecycle-status=active "
        f"patient/Observation.rs?category={LAB}"
    )
    allowed = parse_scopes("patient/*.cruds user/*.rs system/*.cruds patient/Observation.c")
    narrowed = requested.narrowed_to(allowed)
    requested_grants, allowed_grants = _grants(str(requested)), _grants(str(allowed))
    assert _grants(str(narrowed)) <= requested_grants & allowed_grants
    for scope in narrowed.scopes:
        assert any(
            r.context == scope.context and set(r.query) <= set(scope.query)
            for r in requested.scopes
        )
