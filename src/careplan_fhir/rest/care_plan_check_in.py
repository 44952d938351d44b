"""``POST /CarePlan/{id}/$check-in``: the patient's daily check-in, evaluated, alerting once.

An operation of this project (https://hl7.org/fhir/R4/operations.html), defined by
``profiles/OperationDefinition-CarePlan-check-in.json``; the use case is
:mod:`careplan_fhir.workflows.check_in` (rules in ``docs/check-in.md``). The body is a
Parameters resource with ``response`` (a QuestionnaireResponse: its items at least; the
questionnaire, subject, basedOn, status and authored are filled in from the plan when left
out), or the QuestionnaireResponse itself.

One transaction: the QuestionnaireResponse, its Observations and, when a warning sign is
shown, one alert Communication and one Flag. The answer is a Parameters resource with the
advice for the patient (``redFlag``, ``urgency``, ``priority``, ``advice``, one ``sign`` per
sign shown) and references to what was stored: 201 the first time, 200 when the same answers
were checked in already (nothing new written).

Authorization: the caller needs ``create`` on QuestionnaireResponse, and must see the plan
(404 otherwise, as for a plan that does not exist): a patient checks in on her own plans only.
The Observations, Communication and Flag are the server's writes, made after that check.

A plain ``POST /QuestionnaireResponse`` of a check-in (``basedOn`` a CarePlan, answering its
check-in Questionnaire) runs the same evaluation through :func:`check_in_after_create`, the
after-create hook of QuestionnaireResponse (:mod:`careplan_fhir.rest.hooks`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from careplan_fhir.audit.provenance import record_write_provenance
from careplan_fhir.errors import InvalidRequest
from careplan_fhir.fhir import jsonio
from careplan_fhir.storage.repository import StoredResource
from careplan_fhir.workflows.check_in import (
    CheckInOutcome,
    answers_questionnaire,
    based_on_plans,
    check_in_questionnaire,
    record_check_in,
    record_stored_check_in,
)

from .authorization import guard_write_after, guard_write_before, guarded_read
from .context import BodyDep, ContextDep, FhirContext, parse_document, resource_headers

router = APIRouter()


def read_check_in_request(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The QuestionnaireResponse of the call: Parameters ``response``, or the resource itself."""
    document = parse_document(body, content_type)
    if document.get("resourceType") == "QuestionnaireResponse":
        return document
    if document.get("resourceType") != "Parameters":
        raise InvalidRequest(
            "Expected a Parameters resource with 'response', or a QuestionnaireResponse;"
            f" not {document.get('resourceType')!r}"
        )
    responses = []
    for parameter in document.get("parameter") or []:
        if parameter.get("name") != "response":
            raise InvalidRequest(
                f"Unknown parameter {parameter.get('name')!r}; $check-in takes 'response'"
            )
        responses.append(parameter.get("resource"))
    if len(responses) != 1 or not isinstance(responses[0], dict):
        raise InvalidRequest("$check-in takes exactly one 'response' (a QuestionnaireResponse)")
    response: dict[str, Any] = responses[0]
    if response.get("resourceType") != "QuestionnaireResponse":
        raise InvalidRequest("Parameter 'response' must hold a QuestionnaireResponse")
    return response


def _reference(stored: StoredResource) -> dict[str, Any]:
    return {"reference": f"{stored.resource_type}/{stored.id}"}


def outcome_parameters(outcome: CheckInOutcome) -> dict[str, Any]:
    """The operation's answer (see the OperationDefinition)."""
    result = outcome.result
    parameters: list[dict[str, Any]] = [{"name": "redFlag", "valueBoolean": result.red_flag}]
    if result.urgency:
        parameters.append({"name": "urgency", "valueCode": result.urgency})
    if result.priority:
        parameters.append({"name": "priority", "valueCode": result.priority})
    parameters.append({"name": "advice", "valueString": result.advice})
    for sign in result.triggered:
        parameters.append(
            {
                "name": "sign",
                "part": [
                    {"name": "id", "valueString": sign.action_id},
                    {"name": "text", "valueString": sign.text},
                    {"name": "description", "valueString": sign.description},
                    {"name": "priority", "valueCode": sign.priority},
                    {"name": "reason", "valueString": sign.reason},
                ],
            }
        )
    parameters.append(
        {
            "name": "questionnaireResponse",
            "valueReference": _reference(outcome.questionnaire_response),
        }
    )
    for observation in outcome.observations:
        parameters.append({"name": "observation", "valueReference": _reference(observation)})
    if outcome.communication is not None:
        parameters.append(
            {"name": "communication", "valueReference": _reference(outcome.communication)}
        )
    if outcome.flag is not None:
        parameters.append({"name": "flag", "valueReference": _reference(outcome.flag)})
    return {"resourceType": "Parameters", "parameter": parameters}


def record_derived_provenance(ctx: FhirContext, outcome: CheckInOutcome) -> None:
    """The Observations, Communication and Flag get their Provenance like any other write."""
    for stored in outcome.resources()[1:]:
        record_write_provenance(ctx, stored, "CREATE")


def check_in(ctx: FhirContext, plan_id: str, response: dict[str, Any]) -> CheckInOutcome:
    """The operation's work, authorization included, in the caller's write transaction (begun
    with ``ctx.begin_write()``, committed by the caller). The portal's check-in page calls it."""
    decision = guard_write_before(ctx, "QuestionnaireResponse", "create", None)
    guarded_read(ctx, "CarePlan", plan_id)
    outcome = record_check_in(
        ctx.repository, plan_id, response, now=ctx.services.now(), new_id=ctx.services.new_id
    )
    if outcome.created:
        guard_write_after(ctx, decision, outcome.questionnaire_response)
        record_write_provenance(ctx, outcome.questionnaire_response, "CREATE")
        record_derived_provenance(ctx, outcome)
    return outcome


@router.post("/CarePlan/{plan_id}/$check-in", summary="CarePlan $check-in")
def care_plan_check_in(plan_id: str, ctx: ContextDep, body: BodyDep) -> Response:
    response = read_check_in_request(body, ctx.header("content-type"))
    ctx.begin_write()  # before any read: SQLite cannot turn a read transaction into a write
    outcome = check_in(ctx, plan_id, response)
    ctx.commit()
    stored = outcome.questionnaire_response
    headers = resource_headers(stored)
    headers["Location"] = ctx.url_of(stored, versioned=True)
    return ctx.respond(
        jsonio.dumps(outcome_parameters(outcome)), 201 if outcome.created else 200, headers
    )


def check_in_after_create(
    ctx: FhirContext, response: dict[str, Any], stored: StoredResource
) -> CheckInOutcome | None:
    """After ``POST /QuestionnaireResponse``: evaluate it when it is a check-in of a plan.

    A response ``basedOn`` a CarePlan the caller cannot see is refused with 404 (rolling the
    create back); one that answers the plan's check-in Questionnaire and is completed is
    recorded with :func:`record_stored_check_in`; others (drafts, other questionnaires) are
    left as they are.
    """
    plan_ids = based_on_plans(response)
    if not plan_ids:
        return None
    for plan_id in plan_ids:
        plan = guarded_read(ctx, "CarePlan", plan_id)
        if response.get("status") not in ("completed", "amended"):
            continue
        assert plan.raw is not None
        questionnaire = check_in_questionnaire(ctx.repository, jsonio.loads(plan.raw))
        if questionnaire is None or not answers_questionnaire(response, questionnaire):
            continue
        outcome = record_stored_check_in(
            ctx.repository, plan_id, stored, now=ctx.services.now(), new_id=ctx.services.new_id
        )
        if outcome.created:
            record_derived_provenance(ctx, outcome)
        return outcome
    return None
