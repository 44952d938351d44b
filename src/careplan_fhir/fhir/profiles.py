"""The project's profiles and a small validator for their differentials.

Profiles are StructureDefinitions (https://hl7.org/fhir/R4/profiling.html) in ``profiles/``,
shipped with the package as ``profiles_data/`` (a test keeps the two identical). We have no
snapshots offline, neither of the base resources nor of US Core, so the validator reads the
*differential* of each profile and checks what it states:

- cardinality (``min``/``max``) of element paths, nested ones per parent instance
  (``Task.restriction.period`` is counted in each ``Task.restriction``);
- ``fixed[x]`` (exact) and ``pattern[x]`` values (https://hl7.org/fhir/R4/elementdefinition-definitions.html#ElementDefinition.pattern_x_:
  every property of the pattern present, each pattern list item matched by some item);
- ``type``: the allowed types of a choice element (``Goal.start[x]`` as date) and the target
  resource type of a Reference (its ``targetProfile`` resolved to a type name);
- slices discriminated by ``pattern`` on ``$this`` (US Core's ``CarePlan.category:AssessPlan``),
  with open or closed rules;
- required bindings to the few value sets listed in :data:`KNOWN_VALUE_SETS`.

A profile that uses anything else (invariants, other discriminators, elements inside a slice,
a required binding to a value set we do not hold) is refused when loaded, with
:class:`ProfileUnusable`: the validator never silently skips a rule it was given.

The US Core requirements our profiles derive from are restated in their differentials (see
``docs/profiles.md``), which is what allows :func:`meta_profiles` to declare the US Core profile
beside ours. The base specification is checked by
:func:`careplan_fhir.fhir.models.validate_resource`; this module only adds the profiles.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .models import Issue

#: Canonical base of this project's StructureDefinitions.
PROFILE_BASE = "https://careplan-fhir.org/fhir/StructureDefinition/"
_CORE_BASE = "http://hl7.org/fhir/StructureDefinition/"
_US_CORE_BASE = "http://hl7.org/fhir/us/core/StructureDefinition/"

RECOVERY_CARE_PLAN = PROFILE_BASE + "recovery-careplan"
RECOVERY_GOAL = PROFILE_BASE + "recovery-goal"
RECOVERY_TASK = PROFILE_BASE + "recovery-task"
RECOVERY_COMMUNICATION = PROFILE_BASE + "recovery-communication"
CHECK_IN_QUESTIONNAIRE_RESPONSE = PROFILE_BASE + "checkin-questionnaireresponse"
US_CORE_CARE_PLAN = _US_CORE_BASE + "us-core-careplan"
US_CORE_GOAL = _US_CORE_BASE + "us-core-goal"

#: US Core profiles we name as reference targets or base definitions, and the type each
#: constrains. We hold none of their definitions; a target is checked by its type only.
US_CORE_TYPES: Mapping[str, str] = {
    _US_CORE_BASE + "us-core-patient": "Patient",
    US_CORE_CARE_PLAN: "CarePlan",
    US_CORE_GOAL: "Goal",
}

#: Value sets a profile may bind with strength *required*: url -> allowed codes.
#: Source: US Core ValueSet us-core-narrative-status (codes of narrative-status).
KNOWN_VALUE_SETS: Mapping[str, frozenset[str]] = {
    "http://hl7.org/fhir/us/core/ValueSet/us-core-narrative-status": frozenset(
        {"generated", "additional"}
    ),
}

_DATA_PACKAGE = "careplan_fhir.fhir"
_DATA_FOLDER = "profiles_data"
_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]+$")
_REFERENCE = re.compile(
    r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)


class ProfileUnusable(ValueError):
    """A StructureDefinition this validator cannot enforce completely."""


@dataclass(frozen=True)
class SliceRule:
    """A slice of a repeating element, discriminated by a pattern on ``$this``."""

    name: str
    min: int
    max: int | None
    pattern: Any


@dataclass(frozen=True)
class ElementRule:
    """What a differential element requires, for one element path."""

    path: str  # "CarePlan.category", "Goal.start[x]"
    min: int | None = None
    max: int | None = None  # None: unbounded ("*") or not stated
    fixed: Any = None
    pattern: Any = None
    choice_types: frozenset[str] | None = None  # "Date", "CodeableConcept": key suffixes
    target_types: frozenset[str] | None = None  # Reference targets by resource type
    value_set: str | None = None
    slices: tuple[SliceRule, ...] = ()
    closed: bool = False


@dataclass(frozen=True)
class Profile:
    """A loaded StructureDefinition: its canonical url, the type it constrains, its rules."""

    url: str
    name: str
    type: str
    base_definition: str
    rules: tuple[ElementRule, ...]
    must_support: tuple[str, ...]


# --- loading ---------------------------------------------------------------------------


def load_profile(definition: Mapping[str, Any]) -> Profile:
    """Read a StructureDefinition's differential; :class:`ProfileUnusable` if not enforceable."""
    url = definition.get("url")
    resource_type = definition.get("type")
    if definition.get("resourceType") != "StructureDefinition" or not isinstance(url, str):
        raise ProfileUnusable("Not a StructureDefinition with a url")
    if definition.get("derivation") != "constraint" or definition.get("kind") != "resource":
        raise ProfileUnusable(f"{url}: only resource constraints (derivation constraint) are read")
    if not isinstance(resource_type, str) or not _TYPE_NAME.match(resource_type):
        raise ProfileUnusable(f"{url}: type {resource_type!r} is not a resource type")
    elements = definition.get("differential", {}).get("element", [])
    by_path: dict[str, dict[str, Any]] = {}
    slices: dict[str, list[SliceRule]] = {}
    must_support: list[str] = []
    for element in elements:
        path = element.get("path", "")
        element_id = element.get("id", path)
        if path != resource_type and not path.startswith(resource_type + "."):
            raise ProfileUnusable(f"{url}: element {path!r} is not in {resource_type}")
        if ":" in element_id.rpartition(".")[0] or (
            ":" in element_id and "sliceName" not in element
        ):
            raise ProfileUnusable(f"{url}: {element_id}: elements inside a slice are not read")
        if element.get("constraint"):
            raise ProfileUnusable(f"{url}: {element_id}: invariants are not evaluated")
        if element.get("mustSupport"):
            must_support.append(element_id)
        if "sliceName" in element:
            slices.setdefault(path, []).append(_slice_rule(url, element))
        elif path != resource_type:
            by_path[path] = element
    rules = []
    for path, element in by_path.items():
        rules.append(_element_rule(url, path, element, tuple(slices.pop(path, []))))
    if slices:
        raise ProfileUnusable(f"{url}: slices of {sorted(slices)} without a slicing element")
    return Profile(
        url=url,
        name=str(definition.get("name", url)),
        type=resource_type,
        base_definition=str(definition.get("baseDefinition", "")),
        rules=tuple(rules),
        must_support=tuple(must_support),
    )


def _bounds(url: str, element: Mapping[str, Any]) -> tuple[int | None, int | None]:
    minimum = element.get("min")
    maximum = element.get("max")
    if maximum is not None and maximum != "*" and not str(maximum).isdigit():
        raise ProfileUnusable(f"{url}: {element.get('id')}: max {maximum!r}")
    return (
        int(minimum) if minimum is not None else None,
        int(maximum) if maximum not in (None, "*") else None,
    )


def _value_of(element: Mapping[str, Any], prefix: str) -> tuple[bool, Any]:
    for key, value in element.items():
        if key.startswith(prefix) and key[len(prefix) : len(prefix) + 1].isupper():
            return True, value
    return False, None


def _slice_rule(url: str, element: Mapping[str, Any]) -> SliceRule:
    has_pattern, pattern = _value_of(element, "pattern")
    if not has_pattern:
        has_pattern, pattern = _value_of(element, "fixed")
    if not has_pattern:
        raise ProfileUnusable(f"{url}: slice {element.get('id')} has no pattern to match")
    minimum, maximum = _bounds(url, element)
    return SliceRule(str(element["sliceName"]), minimum or 0, maximum, pattern)


def _element_rule(
    url: str, path: str, element: Mapping[str, Any], slices: tuple[SliceRule, ...]
) -> ElementRule:
    minimum, maximum = _bounds(url, element)
    has_fixed, fixed = _value_of(element, "fixed")
    has_pattern, pattern = _value_of(element, "pattern")
    choice_types = None
    target_types = None
    types = element.get("type") or []
    if path.endswith("[x]") and types:
        choice_types = frozenset(t["code"][:1].upper() + t["code"][1:] for t in types)
    targets = [p for t in types if t.get("code") == "Reference" for p in t.get("targetProfile", [])]
    if targets:
        target_types = frozenset(_type_of_profile(url, target) for target in targets)
    value_set = None
    binding = element.get("binding") or {}
    if binding.get("strength") == "required":
        value_set = binding.get("valueSet", "").partition("|")[0]
        if value_set not in KNOWN_VALUE_SETS:
            raise ProfileUnusable(f"{url}: {path}: required binding to unknown {value_set!r}")
    slicing = element.get("slicing")
    closed = False
    if slicing is not None:
        for discriminator in slicing.get("discriminator", []):
            if discriminator.get("type") not in ("pattern", "value") or discriminator.get(
                "path"
            ) not in ("$this", None):
                raise ProfileUnusable(
                    f"{url}: {path}: only pattern/value discriminators on $this are read"
                )
        closed = slicing.get("rules") == "closed"
    elif slices:
        raise ProfileUnusable(f"{url}: {path} has slices but no slicing")
    return ElementRule(
        path=path,
        min=minimum,
        max=maximum,
        fixed=fixed if has_fixed else None,
        pattern=pattern if has_pattern else None,
        choice_types=choice_types,
        target_types=target_types,
        value_set=value_set,
        slices=slices,
        closed=closed,
    )


def _type_of_profile(url: str, canonical: str) -> str:
    canonical = canonical.partition("|")[0]
    if canonical.startswith(_CORE_BASE):
        return canonical[len(_CORE_BASE) :]
    if canonical in US_CORE_TYPES:
        return US_CORE_TYPES[canonical]
    own = _PROFILE_TYPES.get(canonical)
    if own is not None:
        return own
    raise ProfileUnusable(f"{url}: target profile {canonical!r} is unknown")


#: Our profiles and the type each constrains (reference targets may name them).
_PROFILE_TYPES: Mapping[str, str] = {
    RECOVERY_CARE_PLAN: "CarePlan",
    RECOVERY_GOAL: "Goal",
    RECOVERY_TASK: "Task",
    RECOVERY_COMMUNICATION: "Communication",
    CHECK_IN_QUESTIONNAIRE_RESPONSE: "QuestionnaireResponse",
}


def profile_definitions() -> list[dict[str, Any]]:
    """The StructureDefinitions shipped with the package, by file name."""
    folder = resources.files(_DATA_PACKAGE).joinpath(_DATA_FOLDER)
    documents = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.startswith("StructureDefinition-") and entry.name.endswith(".json"):
            documents.append(json.loads(entry.read_text(encoding="utf-8")))
    return documents


@functools.cache
def known_profiles() -> Mapping[str, Profile]:
    """Every profile we ship, by canonical url."""
    profiles = {}
    for definition in profile_definitions():
        profile = load_profile(definition)
        profiles[profile.url] = profile
    return profiles


def find_profile(canonical: str) -> Profile | None:
    """The profile a canonical (``url`` or ``url|version``) names, when we ship it."""
    return known_profiles().get(canonical.partition("|")[0])


def meta_profiles(resource_type: str) -> list[str]:
    """What a resource of ``resource_type`` we produce declares in ``meta.profile``.

    Our profile, and the US Core profile it derives from: our differential restates every
    mandatory element of that US Core profile, so meeting ours meets it (docs/profiles.md).
    Empty for types we have no profile for.
    """
    declared = []
    for profile in known_profiles().values():
        if profile.type == resource_type:
            declared.append(profile.url)
            if profile.base_definition in US_CORE_TYPES:
                declared.append(profile.base_definition)
    return declared


def supported_profiles() -> dict[str, list[str]]:
    """``CapabilityStatement.rest.resource.supportedProfile`` per resource type."""
    types = sorted({profile.type for profile in known_profiles().values()})
    return {resource_type: meta_profiles(resource_type) for resource_type in types}


# --- validating ------------------------------------------------------------------------


def validate_against_profile(resource: Mapping[str, Any], profile: Profile) -> list[Issue]:
    """Every way ``resource`` departs from ``profile`` (and the profiles it derives from that
    we ship). The base specification is not checked here (see ``models.validate_resource``)."""
    resource_type = resource.get("resourceType")
    if resource_type != profile.type:
        return [
            Issue(
                f"{profile.name} constrains {profile.type}, not {resource_type!r}",
                str(resource_type or "resourceType"),
                "invalid",
            )
        ]
    issues: list[Issue] = []
    seen: set[str] = set()
    current: Profile | None = profile
    while current is not None and current.url not in seen:
        seen.add(current.url)
        for rule in current.rules:
            for issue in _check_rule(resource, rule, current.name):
                if issue not in issues:
                    issues.append(issue)
        current = find_profile(current.base_definition)
    return issues


def check_declared_profiles(resource: Mapping[str, Any]) -> list[Issue]:
    """Issues of ``resource`` against each profile in its ``meta.profile`` that we ship.

    Profiles we do not ship (US Core's among them: ours restate their mandatory elements)
    are skipped; :func:`unchecked_profiles` lists them. The base specification is not
    checked here: call ``models.validate_resource`` as well.
    """
    issues: list[Issue] = []
    for profile in declared_profiles(resource):
        issues.extend(i for i in validate_against_profile(resource, profile) if i not in issues)
    return issues


def declared_profiles(resource: Mapping[str, Any]) -> list[Profile]:
    """The profiles in ``resource``'s ``meta.profile`` that we ship."""
    found = []
    for canonical in _declared(resource):
        profile = find_profile(canonical)
        if profile is not None and profile not in found:
            found.append(profile)
    return found


def unchecked_profiles(resource: Mapping[str, Any]) -> list[str]:
    """The canonicals in ``meta.profile`` that :func:`check_declared_profiles` cannot check."""
    return [canonical for canonical in _declared(resource) if find_profile(canonical) is None]


def _declared(resource: Mapping[str, Any]) -> list[str]:
    meta = resource.get("meta")
    declared = meta.get("profile") if isinstance(meta, dict) else None
    if not isinstance(declared, list):
        return []
    return [canonical for canonical in declared if isinstance(canonical, str)]


@dataclass(frozen=True)
class _Node:
    value: Any
    expression: str


def _children(parent: _Node, name: str) -> Iterator[_Node]:
    """The occurrences of element ``name`` in ``parent`` (lists flattened, indexed)."""
    if not isinstance(parent.value, dict):
        return
    if name.endswith("[x]"):
        stem = name[:-3]
        keys = [
            key
            for key in parent.value
            if key.startswith(stem) and key[len(stem) : len(stem) + 1].isupper()
        ]
    else:
        keys = [name] if name in parent.value or f"_{name}" in parent.value else []
    for key in keys:
        # A primitive given only by its extensions (``_status``) still counts as present.
        value = parent.value.get(key, parent.value.get(f"_{key}"))
        if isinstance(value, list):
            for index, item in enumerate(value):
                yield _Node(item, f"{parent.expression}.{key}[{index}]")
        elif value is not None:
            yield _Node(value, f"{parent.expression}.{key}")


def _nodes(resource: Mapping[str, Any], parts: list[str]) -> list[_Node]:
    nodes = [_Node(dict(resource), str(resource["resourceType"]))]
    for part in parts:
        nodes = [child for node in nodes for child in _children(node, part)]
    return nodes


def _check_rule(resource: Mapping[str, Any], rule: ElementRule, profile: str) -> list[Issue]:
    parts = rule.path.split(".")[1:]
    name = parts[-1]
    shown = name[:-3] if name.endswith("[x]") else name
    issues: list[Issue] = []
    for parent in _nodes(resource, parts[:-1]):
        if not isinstance(parent.value, dict):
            continue
        children = list(_children(parent, name))
        where = f"{parent.expression}.{shown}"
        _check_count(issues, len(children), rule.min, rule.max, where, f"{profile}: {rule.path}")
        for slice_rule in rule.slices:
            members = [c for c in children if _matches(c.value, slice_rule.pattern)]
            _check_count(
                issues,
                len(members),
                slice_rule.min,
                slice_rule.max,
                where,
                f"{profile}: slice {rule.path}:{slice_rule.name} ({_describe(slice_rule.pattern)})",
            )
        if rule.closed:
            for child in children:
                if not any(_matches(child.value, s.pattern) for s in rule.slices):
                    issues.append(
                        Issue(
                            f"{profile}: {rule.path} is closed to items outside its slices",
                            child.expression,
                            "structure",
                        )
                    )
        for child in children:
            _check_value(issues, resource, rule, child, profile)
    return issues


def _check_count(
    issues: list[Issue],
    count: int,
    minimum: int | None,
    maximum: int | None,
    where: str,
    what: str,
) -> None:
    if minimum is not None and count < minimum:
        issues.append(
            Issue(f"{what}: at least {minimum} required, {count} found", where, "required")
        )
    if maximum is not None and count > maximum:
        issues.append(
            Issue(f"{what}: at most {maximum} allowed, {count} found", where, "structure")
        )


def _check_value(
    issues: list[Issue], resource: Mapping[str, Any], rule: ElementRule, child: _Node, profile: str
) -> None:
    what = f"{profile}: {rule.path}"
    where = child.expression
    if rule.choice_types is not None:
        stem = rule.path.rpartition(".")[2][:-3]
        key = where.rpartition(".")[2].partition("[")[0]
        suffix = key[len(stem) :]
        if suffix not in rule.choice_types:
            allowed = ", ".join(sorted(stem + t for t in rule.choice_types))
            issues.append(
                Issue(f"{what}: {key} is not allowed (use {allowed})", where, "structure")
            )
    if rule.fixed is not None and child.value != rule.fixed:
        issues.append(
            Issue(
                f"{what}: must be exactly {_json(rule.fixed)}, not {_json(child.value)}",
                where,
                "value",
            )
        )
    if rule.pattern is not None and not _matches(child.value, rule.pattern):
        issues.append(Issue(f"{what}: must match {_describe(rule.pattern)}", where, "value"))
    if rule.value_set is not None:
        codes = KNOWN_VALUE_SETS[rule.value_set]
        if isinstance(child.value, str) and child.value not in codes:
            issues.append(
                Issue(
                    f"{what}: {child.value!r} is not in {rule.value_set} "
                    f"({', '.join(sorted(codes))})",
                    where,
                    "code-invalid",
                )
            )
    if rule.target_types is not None and isinstance(child.value, dict):
        target = _reference_type(resource, child.value)
        allowed_types = ", ".join(sorted(rule.target_types))
        if target is None:
            issues.append(
                Issue(
                    f"{what}: cannot tell the type of the referenced resource"
                    f" (expected {allowed_types})",
                    where,
                    "incomplete",
                    "warning",
                )
            )
        elif target not in rule.target_types:
            issues.append(
                Issue(
                    f"{what}: must reference {allowed_types}, not {target}",
                    where,
                    "invalid",
                )
            )


def _reference_type(resource: Mapping[str, Any], reference: Mapping[str, Any]) -> str | None:
    """The resource type a Reference points at: its ``type``, a contained resource, the URL."""
    declared = reference.get("type")
    if isinstance(declared, str):
        return declared.rpartition("/")[2]
    literal = reference.get("reference")
    if not isinstance(literal, str):
        return None
    if literal.startswith("#"):
        for contained in resource.get("contained") or []:
            if isinstance(contained, dict) and contained.get("id") == literal[1:]:
                found = contained.get("resourceType")
                return found if isinstance(found, str) else None
        return None
    match = _REFERENCE.search(literal.partition("?")[0])
    return match.group("type") if match else None


def _matches(value: Any, pattern: Any) -> bool:
    """FHIR pattern matching: what the pattern states, the value has (list items: somewhere)."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            key in value and _matches(value[key], item) for key, item in pattern.items()
        )
    if isinstance(pattern, list):
        return isinstance(value, list) and all(
            any(_matches(candidate, item) for candidate in value) for item in pattern
        )
    return bool(value == pattern)


def _describe(pattern: Any) -> str:
    codings = pattern.get("coding") if isinstance(pattern, dict) else None
    if isinstance(codings, list) and codings:
        return "a coding " + " and ".join(
            f"{c.get('system', '')}|{c.get('code', '')}" for c in codings if isinstance(c, dict)
        )
    return _json(pattern)


def _json(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)
