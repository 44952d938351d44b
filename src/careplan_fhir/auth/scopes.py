"""SMART App Launch v2 scopes: parsing them, what they grant, and narrowing one set by another.

Spec: SMART App Launch 2.2.0, "Scopes and Launch Context"
(https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html):

* "Scopes for requesting FHIR Resources": ``(patient|user|system)/(Type|*).[c][r][u][d][s]``; the
  suffix is a non-empty subset of the in-order string ``cruds`` ("a request of ``.dus`` is not a
  defined scope request"), and the v1 suffixes are read as ``.read`` = ``.rs``, ``.write`` =
  ``.cud``, ``.*`` = ``.cruds``.
* "Finer-grained resource constraints using search parameters": a ``?param=value&...`` suffix
  limits a scope to the resources matching that search (the parameters are ANDed, as in a FHIR
  search). Such a scope is *granular*: it grants its permissions only on matching resources, and
  the caller has to apply the query (see :meth:`ScopeSet.granting`).
* "Scope Equivalence": scopes combine as a union; ``Observation.rs`` equals
  ``Observation.r Observation.s``. :meth:`ScopeSet.__str__` writes the shortest form.
* "Scopes for requesting context data", "... identity data", "... a refresh token" and
  "Extensibility": ``openid``, ``fhirUser``, ``profile``, ``launch``, ``launch/patient``,
  ``launch/encounter``, other ``launch/<lowercase type>`` scopes (with an optional ``?role=``),
  ``offline_access``, ``online_access``, and extension scopes (a full URI, or a name starting
  with ``__``) are kept as written in :attr:`ScopeSet.other`.

Everything else is malformed and lands in :attr:`ScopeSet.invalid`: a token endpoint refuses a
request that has any (``invalid_scope``); a resource server ignores them.

Pure functions and immutable values; nothing here knows about requests or tokens.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, quote, urlencode

#: The v2 permissions, in the order the scope syntax requires.
PERMISSIONS = ("c", "r", "u", "d", "s")
#: Who the scope acts for: the in-context patient, the signed-in user, or the client system.
CONTEXTS = ("patient", "user", "system")

#: SMART App Launch 1.0 suffixes and their v2 meaning.
V1_ALIASES: dict[str, frozenset[str]] = {
    "read": frozenset("rs"),
    "write": frozenset("cud"),
    "*": frozenset("cruds"),
}

#: The non-resource scopes the specification defines by name.
KNOWN_OTHER_SCOPES = frozenset(
    {
        "openid",
        "fhirUser",
        "profile",
        "launch",
        "launch/patient",
        "launch/encounter",
        "offline_access",
        "online_access",
    }
)

_RESOURCE_SCOPE = re.compile(
    r"(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]*)\.(?P<suffix>[^?]*)"
    r"(?:\?(?P<query>.*))?"
)
_V2_SUFFIX = re.compile(r"c?r?u?d?s?")
# "launch/diagnosticreport", "launch/list?role=https://example.org/med-list-at-home"
_LAUNCH_SCOPE = re.compile(r"launch/[a-z]+(?:\?role=[^&\s]+)?")
# Extension scopes: a full URI you control, or a name starting with two underscores.
_EXTENSION_SCOPE = re.compile(r"__\S+|https?://\S+|urn:\S+")
# Characters left as they are when a granular query is written back: FHIR token and URI syntax.
_QUERY_SAFE = ":/|,$*"


def _letters(permissions: Iterable[str]) -> str:
    chosen = set(permissions)
    return "".join(p for p in PERMISSIONS if p in chosen)


@dataclass(frozen=True)
class Scope:
    """One resource scope, e.g. ``patient/Observation.rs?category=...|laboratory``."""

    #: "patient" | "user" | "system"
    context: str
    #: A resource type name, or "*" for every type.
    resource_type: str
    #: A non-empty subset of :data:`PERMISSIONS`.
    permissions: frozenset[str]
    #: A granular scope's search parameters, in the order written; empty for a whole-type scope.
    query: tuple[tuple[str, str], ...] = ()
    #: The scope as written (not part of equality: ``.read`` equals ``.rs``).
    text: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.context not in CONTEXTS:
            raise ValueError(f"scope context must be one of {CONTEXTS}, not {self.context!r}")
        if not self.permissions or not self.permissions <= frozenset(PERMISSIONS):
            raise ValueError(f"scope permissions must be a non-empty subset of {PERMISSIONS}")

    @property
    def granular(self) -> bool:
        """Whether a search query limits the scope to some resources of its type."""
        return bool(self.query)

    def covers(self, resource_type: str, permission: str) -> bool:
        """Whether the scope grants ``permission`` on ``resource_type`` (its query aside).

        ``resource_type="*"`` asks about every type at once (system-level search), which only
        a wildcard scope covers.
        """
        if permission not in PERMISSIONS:
            raise ValueError(f"permission must be one of {PERMISSIONS}, not {permission!r}")
        return permission in self.permissions and self.resource_type in ("*", resource_type)

    def __str__(self) -> str:
        """The normalised v2 text: permissions in ``cruds`` order, the query re-encoded."""
        text = f"{self.context}/{self.resource_type}.{_letters(self.permissions)}"
        if self.query:
            text += "?" + urlencode(self.query, safe=_QUERY_SAFE, quote_via=quote)
        return text


@dataclass(frozen=True)
class ScopeSet:
    """The scopes of a request or a token, sorted into resource scopes, others and malformed."""

    scopes: tuple[Scope, ...] = ()
    #: Well-formed non-resource scopes (``openid``, ``launch/patient`` ...), as written.
    other: tuple[str, ...] = ()
    #: Malformed scopes, as written.
    invalid: tuple[str, ...] = ()

    def granting(
        self,
        resource_type: str,
        permission: str,
        *,
        contexts: Collection[str] | None = None,
    ) -> tuple[Scope, ...]:
        """The scopes granting ``permission`` on ``resource_type`` (only in ``contexts``, if given).

        Granular scopes are included: each grants only on the resources its query matches.
        """
        return tuple(
            scope
            for scope in self.scopes
            if scope.covers(resource_type, permission)
            and (contexts is None or scope.context in contexts)
        )

    def allows(
        self,
        resource_type: str,
        permission: str,
        *,
        contexts: Collection[str] | None = None,
        include_granular: bool = False,
    ) -> bool:
        """Whether a scope grants ``permission`` on every resource of ``resource_type``.

        Granular scopes only count with ``include_granular=True``: by default a client that holds
        just ``patient/Observation.rs?category=...`` is *not* allowed to read Observations, so a
        caller that ignores queries fails closed. Use :meth:`granting` to apply the queries.
        """
        return any(
            include_granular or not scope.granular
            for scope in self.granting(resource_type, permission, contexts=contexts)
        )

    def contexts(self) -> frozenset[str]:
        """The contexts ("patient", "user", "system") of the resource scopes."""
        return frozenset(scope.context for scope in self.scopes)

    def narrowed_to(self, allowed: ScopeSet) -> ScopeSet:
        """What ``allowed`` permits of these scopes: the token endpoint's requested ∩ registered.

        Each requested scope is intersected with each allowed scope of the same context: the
        narrower type, the permissions both have, and both queries (ANDed). So requested
        ``system/Observation.cruds`` with allowed ``system/*.rs`` gives ``system/Observation.rs``,
        and requested ``system/*.rs`` with allowed ``system/Patient.rs system/Goal.r`` gives
        ``system/Patient.rs system/Goal.r``. The results are merged (same context, type and query)
        and any result another one already covers is dropped. Other scopes are kept when
        ``allowed`` has them too; malformed ones are dropped (refuse them before narrowing).
        """
        results: list[Scope] = []
        for requested in self.scopes:
            for permitted in allowed.scopes:
                granted = _intersect(requested, permitted)
                if granted is not None:
                    results.append(requested if granted == requested else granted)
        merged = _merge(results)
        kept = tuple(
            scope
            for scope in merged
            if not any(other is not scope and _subsumes(other, scope) for other in merged)
        )
        allowed_other = set(allowed.other)
        other = tuple(name for name in dict.fromkeys(self.other) if name in allowed_other)
        return ScopeSet(scopes=kept, other=other)

    def __str__(self) -> str:
        """Space-joined normalised v2 text: resource scopes (merged per type and query), others."""
        words = [str(scope) for scope in _merge(self.scopes)]
        words.extend(dict.fromkeys(self.other))
        return " ".join(words)


def parse_scopes(text: str) -> ScopeSet:
    """Sort a space-separated ``scope`` string into resource scopes, other scopes and malformed.

    Repeated scopes are kept once. Nothing is ever raised: malformed scopes land in ``invalid``.
    """
    scopes: list[Scope] = []
    other: list[str] = []
    invalid: list[str] = []
    for word in dict.fromkeys(text.split()):
        if word.startswith(("patient/", "user/", "system/")):
            scope = parse_scope(word)
            if scope is None:
                invalid.append(word)
            else:
                scopes.append(scope)
        elif (
            word in KNOWN_OTHER_SCOPES
            or _LAUNCH_SCOPE.fullmatch(word)
            or _EXTENSION_SCOPE.fullmatch(word)
        ):
            other.append(word)
        else:
            invalid.append(word)
    return ScopeSet(scopes=tuple(scopes), other=tuple(other), invalid=tuple(invalid))


def parse_scope(word: str) -> Scope | None:
    """One resource scope, or None when ``word`` is not a well-formed one."""
    match = _RESOURCE_SCOPE.fullmatch(word)
    if match is None:
        return None
    suffix, raw_query = match["suffix"], match["query"]
    if suffix in V1_ALIASES:
        if raw_query is not None:
            return None  # v1 had no granular scopes
        permissions = V1_ALIASES[suffix]
    elif suffix and _V2_SUFFIX.fullmatch(suffix):
        permissions = frozenset(suffix)
    else:
        return None  # empty, repeated, unknown or out-of-order letters
    query: tuple[tuple[str, str], ...] = ()
    if raw_query is not None:
        try:
            pairs = parse_qsl(raw_query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            return None
        if not pairs or any(not name or not value for name, value in pairs):
            return None
        query = tuple(pairs)
    return Scope(match["context"], match["type"], permissions, query, text=word)


def _intersect(a: Scope, b: Scope) -> Scope | None:
    """What both scopes grant, as one scope; None when they share nothing."""
    if a.context != b.context:
        return None
    if a.resource_type == "*":
        resource_type = b.resource_type
    elif b.resource_type in ("*", a.resource_type):
        resource_type = a.resource_type
    else:
        return None
    permissions = a.permissions & b.permissions
    if not permissions:
        return None
    query = a.query + tuple(pair for pair in b.query if pair not in a.query)
    granted = Scope(a.context, resource_type, permissions, query)
    return replace(granted, text=str(granted))


def _subsumes(wide: Scope, narrow: Scope) -> bool:
    """Whether ``wide`` grants everything ``narrow`` does."""
    return (
        wide.context == narrow.context
        and wide.resource_type in ("*", narrow.resource_type)
        and set(wide.query) <= set(narrow.query)
        and narrow.permissions <= wide.permissions
    )


def _merge(scopes: Iterable[Scope]) -> tuple[Scope, ...]:
    """Scopes with the same context, type and query merged into one (union of permissions)."""
    merged: dict[tuple[str, str, frozenset[tuple[str, str]]], Scope] = {}
    for scope in scopes:
        key = (scope.context, scope.resource_type, frozenset(scope.query))
        seen = merged.get(key)
        if seen is None:
            merged[key] = scope
        elif not scope.permissions <= seen.permissions:
            union = replace(seen, permissions=seen.permissions | scope.permissions)
            merged[key] = replace(union, text=str(union))
    return tuple(merged.values())
