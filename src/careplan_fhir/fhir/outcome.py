"""OperationOutcome builders (https://hl7.org/fhir/R4/operationoutcome.html)."""

from __future__ import annotations

from typing import Any


def issue(
    diagnostics: str,
    *,
    code: str = "processing",
    severity: str = "error",
    expression: str | None = None,
) -> dict[str, Any]:
    """One ``OperationOutcome.issue``; ``code`` is from the required IssueType value set."""
    entry: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        entry["expression"] = [expression]
    return entry


def operation_outcome(issues: list[dict[str, Any]]) -> dict[str, Any]:
    """An OperationOutcome resource holding ``issues`` (at least one)."""
    if not issues:
        issues = [issue("All OK", code="informational", severity="information")]
    return {"resourceType": "OperationOutcome", "issue": issues}
