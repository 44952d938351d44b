"""The route table of the FHIR facade, in matching order (fixed paths before ``{id}``)."""

from __future__ import annotations

from fastapi import APIRouter

from . import (
    batch_transaction,
    capabilities,
    care_plan_check_in,
    care_plan_revoke,
    create,
    delete,
    encounter_attach_care_plan,
    history,
    patch,
    patient_portal_invitation,
    patient_portal_invitation_revoke,
    plan_definition_apply,
    plan_definition_import,
    read,
    resource_validate,
    search_type,
    update,
    vread,
)


def fhir_router() -> APIRouter:
    """All FHIR interactions, to be mounted at ``/fhir``."""
    router = APIRouter()
    for module in (
        capabilities,
        batch_transaction,
        history,
        search_type,
        vread,
        plan_definition_import,
        plan_definition_apply,
        encounter_attach_care_plan,
        care_plan_revoke,
        care_plan_check_in,
        patient_portal_invitation,
        patient_portal_invitation_revoke,
        resource_validate,
        read,
        create,
        update,
        patch,
        delete,
    ):
        router.include_router(module.router)
    return router
