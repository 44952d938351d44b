"""The inputs and outputs of the pure ``$apply`` engine (https://hl7.org/fhir/R4/plandefinition-operation-apply.html).

The engine (``careplan_fhir.apply.engine.apply_plan_definition``) takes a PlanDefinition, the
ActivityDefinitions its actions point to, and an :class:`ApplyContext`; it returns an
:class:`ApplyResult` of resources that are not stored yet. It never reads a clock, a database
or the environment: ``now``, the start of the plan and the id factory come in the context, so
the same inputs give the same output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ApplyContext:
    """Everything ``$apply`` binds into the template."""

    #: ``Patient/{id}``: the plan's subject (required by $apply).
    subject: str
    #: Aware datetime of the call (authoredOn, Provenance.recorded, sent).
    now: datetime
    #: When relative timing starts: the encounter's discharge (period.end) or ``now``.
    start: datetime
    #: ``new_id(resource_type)`` → a fresh logical id; references between the outputs use them.
    new_id: Callable[[str], str]
    encounter: str | None = None
    practitioner: str | None = None
    organization: str | None = None
    user_language: str | None = None
    setting: str | None = None
    #: Clinician parameters by name: a FHIR Quantity dict (``value`` as Decimal, ``unit``,
    #: ``system`` http://unitsofmeasure.org, ``code``) or a plain value for string/integer types.
    parameters: Mapping[str, Any] = field(default_factory=dict)
    #: Conditions the plan addresses (``Condition/{id}``), e.g. from the encounter's diagnosis.
    addresses: tuple[str, ...] = ()


@dataclass
class ApplyResult:
    """The unsaved resources of one applied plan, each with its id already set."""

    care_plan: dict[str, Any]
    goals: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    communications: list[dict[str, Any]] = field(default_factory=list)

    def resources(self) -> list[dict[str, Any]]:
        """All outputs, the CarePlan first."""
        return [self.care_plan, *self.goals, *self.tasks, *self.communications]


@dataclass(frozen=True)
class ApplyIssue:
    """One problem with the inputs, named by the parameter or element it concerns."""

    name: str
    message: str


class ApplyError(ValueError):
    """The template cannot be applied as asked (missing/wrong parameter, template not active)."""

    def __init__(self, issues: list[ApplyIssue]) -> None:
        super().__init__("; ".join(f"{i.name}: {i.message}" for i in issues))
        self.issues = issues
