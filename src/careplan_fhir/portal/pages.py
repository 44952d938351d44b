"""The patient portal's pages under ``/portal`` (server-rendered; docs/portal.md).

Each page: who is calling (:mod:`careplan_fhir.portal.sessions`), the data read through the
guarded interaction functions with that caller (:mod:`careplan_fhir.portal.data`), a pure view
model (:mod:`careplan_fhir.portal.view_models`), a Jinja2 template. Forms post back here with
the session's anti-CSRF value and are answered with a redirect (303, post/redirect/get), so a
reload never repeats a tick. Failures are HTML pages with the matching status, never a stack
trace: 401 without a session, 403 for the wrong kind of caller, 404 for anything that is not
the caller's (another patient's plan or Task looks exactly like one that does not exist).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta, tzinfo
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from careplan_fhir.errors import FhirError, InvalidRequest, UnsupportedMediaType
from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.dates import utc_now
from careplan_fhir.fhir.models import ResourceInvalid, validate_resource
from careplan_fhir.rest.authorization import guarded_read
from careplan_fhir.rest.care_plan_check_in import check_in
from careplan_fhir.rest.context import FhirContext, Services, read_body
from careplan_fhir.rest.errors import status_for
from careplan_fhir.rest.update import update_resource
from careplan_fhir.workflows.check_in import check_in_questionnaire

from . import view_models as views
from .data import PortalReader, active_plans, load_record, portal_context
from .invitations import InvitationRefused, csrf_token, open_invitation, start_session
from .sessions import (
    CLINICIAN_COOKIE,
    COOKIE_PATH,
    SESSION_COOKIE,
    NotSignedIn,
    PortalCaller,
    clinician_caller,
    clinician_token_access,
    patient_caller,
    secure_cookies,
)
from .templating import STATIC_FILES, render, static_file

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/portal", include_in_schema=False)

_INVITATION_STATUS = {"invalid": 400, "expired": 410, "revoked": 410}
_ERROR_TITLES = {
    400: "Something is wrong with that request",
    401: "Please sign in",
    403: "Not allowed",
    404: "We could not find that",
    409: "Something changed meanwhile",
    410: "This is no longer available",
    412: "Something changed meanwhile",
    413: "That was too much to send",
    422: "We could not save that",
}
_ERROR_MESSAGES = {
    404: (
        "There is nothing here for you. The page may have moved, or it belongs to someone"
        " else. Go back to your own pages from the menu."
    ),
    409: "Please reload the page and try again.",
    410: "It was removed or has ended.",
    412: "Please reload the page and try again.",
}


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def zone_of(services: Services) -> tzinfo:
    return ZoneInfo(services.settings.portal_timezone)


def error_page(
    status: int, message: str, *, title: str | None = None, sign_in: bool = False
) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="careplan-portal"'} if status == 401 else None
    return render(
        "error.html",
        status,
        headers,
        title=title or _ERROR_TITLES.get(status, "Something went wrong"),
        message=message,
        sign_in=sign_in,
        nav=None,
    )


def guarded_page(build: Callable[[], Response]) -> Response:
    """Run a page; its refusals become HTML pages with the right status."""
    try:
        return build()
    except NotSignedIn as refused:
        return error_page(refused.status, refused.message, sign_in=refused.status == 401)
    except ResourceInvalid as invalid:
        message = "; ".join(i.diagnostics for i in invalid.issues[:3])
        return error_page(422, f"The change was not saved: {message}")
    except FhirError as error:
        status = status_for(error)
        if status >= 500:
            logger.error("portal page failed: %s", error.message)
            return error_page(status, "Please try again in a moment.")
        message = _ERROR_MESSAGES.get(status, error.message)
        return error_page(status, message)
    except Exception:
        logger.exception("portal page failed")
        return error_page(500, "Something went wrong on our side; nothing was changed.")


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (size-limited) as a dict."""
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("The portal's forms are sent as x-www-form-urlencoded")
    body = await read_body(request)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("The form is not UTF-8") from None
    return dict(parse_qsl(text, keep_blank_values=True))


async def form_page(request: Request, build: Callable[[dict[str, str]], Response]) -> Response:
    """A POST handler: read the form on the event loop, do the work in a thread."""
    try:
        form = await read_form(request)
    except FhirError as error:
        return error_page(status_for(error), error.message)
    return await run_in_threadpool(guarded_page, lambda: build(form))


def _local_path(value: str | None, default: str) -> str:
    """A redirect target that stays on the portal (never another site)."""
    if value and value.startswith("/portal/") and "//" not in value and "\\" not in value:
        return value
    return default


def patient_nav(current: str, caller: PortalCaller) -> dict[str, Any]:
    return {"current": current, "csrf": caller.csrf, "kind": "patient"}


# -- getting in -------------------------------------------------------------------------------


def root_redirect() -> Response:
    """``GET /``: the portal's landing page (the FHIR API is at ``/fhir``)."""
    return RedirectResponse("/portal/", status_code=302)


@router.get("")
@router.get("/")
def landing() -> Response:
    return render("landing.html", nav=None)


@router.get("/static/{name}")
def static(name: str) -> Response:
    content = static_file(name)
    if content is None:
        return error_page(404, "No such file.")
    return Response(
        content, media_type=STATIC_FILES[name], headers={"Cache-Control": "public, max-age=3600"}
    )


@router.get("/invitation")
def invitation(request: Request, token: str = "") -> Response:
    """Open an invitation link: check it, start the session, welcome the patient."""
    services = _services(request)
    key = services.signing_key
    assert key is not None
    now = utc_now()
    with services.engine.connect() as connection:
        try:
            opened = open_invitation(
                connection, key, token, issuer=services.settings.auth_issuer, now=now
            )
        except InvitationRefused as refused:
            return render(
                "invitation_refused.html",
                _INVITATION_STATUS[refused.reason],
                reason=refused.reason,
                message=refused.message,
                nav=None,
            )
    session = start_session(
        key,
        opened,
        issuer=services.settings.auth_issuer,
        now=now,
        lifetime=timedelta(seconds=services.settings.portal_session_seconds),
    )
    # The welcome page links on (a same-site navigation carries the SameSite=Strict cookie;
    # a redirect from the mail or text message the link came in would not).
    response = render("welcome.html", nav=None, expires=session.expires)
    response.set_cookie(
        SESSION_COOKIE,
        session.token,
        max_age=int((session.expires - now).total_seconds()),
        path=COOKIE_PATH,
        secure=secure_cookies(request, services),
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    def build(form: dict[str, str]) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie and form.get("csrf") != csrf_token(cookie):
            raise NotSignedIn("csrf", "This form has expired. Reload the page and try again.", 403)
        response = render("signed_out.html", nav=None)
        response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
        return response

    return await form_page(request, build)


# -- the patient's pages ----------------------------------------------------------------------


def _patient_page(
    request: Request, build: Callable[[PortalCaller, FhirContext], Response]
) -> Response:
    def page() -> Response:
        caller = patient_caller(request)
        ctx = portal_context(request, caller.access)
        ctx.read_only = True
        try:
            return build(caller, ctx)
        finally:
            ctx.close()

    return guarded_page(page)


@router.get("/today")
def today(request: Request) -> Response:
    def build(caller: PortalCaller, ctx: FhirContext) -> Response:
        services = ctx.services
        record = load_record(PortalReader(ctx), caller.patient_id)
        view = views.today_view(
            record.patient, record.plans, record.tasks, services.now(), zone_of(services)
        )
        return render("today.html", view=view, nav=patient_nav("today", caller))

    return _patient_page(request, build)


@router.post("/tasks/{task_id}/done")
async def task_done(request: Request, task_id: str) -> Response:
    """Tick a Task off: a guarded update of the patient's own Task (with its Provenance)."""

    def build(form: dict[str, str]) -> Response:
        caller = patient_caller(request)
        caller.check_csrf(form)
        ctx = portal_context(request, caller.access)
        services = ctx.services
        try:
            ctx.begin_write()
            stored = guarded_read(ctx, "Task", task_id)
            assert stored.raw is not None
            task = jsonio.loads(stored.raw)
            updated = views.task_marked_done(
                task, services.now(), zone_of(services), f"Patient/{caller.patient_id}"
            )
            if updated is not None:
                validate_resource(updated)
                update_resource(ctx, updated, task_id, stored.version)
                ctx.commit()
        finally:
            ctx.close()
        target = _local_path(form.get("next"), "/portal/today")
        return RedirectResponse(f"{target}#task-{task_id}", status_code=303)

    return await form_page(request, build)


def _plans_page(request: Request, plan_id: str | None) -> Response:
    def build(caller: PortalCaller, ctx: FhirContext) -> Response:
        services = ctx.services
        record = load_record(PortalReader(ctx), caller.patient_id, plan_id=plan_id, details=True)
        plans = [
            views.plan_view(
                plan,
                record.tasks_by_id(),
                record.goals,
                record.education.get(str(plan["id"]), []),
                services.now(),
                zone_of(services),
            )
            for plan in record.plans
        ]
        return render(
            "plan.html",
            plans=plans,
            single=plan_id is not None,
            next_url=f"/portal/plans/{plan_id}" if plan_id else "/portal/plan",
            nav=patient_nav("plan", caller),
        )

    return _patient_page(request, build)


@router.get("/plan")
def my_plan(request: Request) -> Response:
    return _plans_page(request, None)


@router.get("/plans/{plan_id}")
def one_plan(request: Request, plan_id: str) -> Response:
    return _plans_page(request, plan_id)


@router.get("/help")
def get_help(request: Request) -> Response:
    def build(caller: PortalCaller, ctx: FhirContext) -> Response:
        record = load_record(PortalReader(ctx), caller.patient_id, contacts=True)
        view = views.help_view(record.plans, record.resolved)
        return render(
            "help.html", view=view, has_plan=bool(record.plans), nav=patient_nav("help", caller)
        )

    return _patient_page(request, build)


@router.get("/handout")
def handout(request: Request) -> Response:
    def build(caller: PortalCaller, ctx: FhirContext) -> Response:
        services = ctx.services
        record = load_record(PortalReader(ctx), caller.patient_id, details=True, contacts=True)
        now = services.now()
        zone = zone_of(services)
        plans = [
            views.plan_view(
                plan,
                record.tasks_by_id(),
                record.goals,
                record.education.get(str(plan["id"]), []),
                now,
                zone,
            )
            for plan in record.plans
        ]
        return render(
            "handout.html",
            plans=plans,
            help=views.help_view(record.plans, record.resolved),
            patient=views.human_name(record.patient),
            printed=views.day_text(views.local_date(now, zone)),
            nav=patient_nav("handout", caller),
        )

    return _patient_page(request, build)


# -- the daily check-in -----------------------------------------------------------------------


def plan_questionnaire(
    ctx: FhirContext, reader: PortalReader, plan: dict[str, Any]
) -> dict[str, Any] | None:
    """The check-in Questionnaire the plan's template names (workflows/check_in.py)."""
    canonical = check_in_questionnaire(ctx.repository, plan)
    if canonical is None:
        return None
    url, _, version = canonical.partition("|")
    params = [("url", url), *([("version", version)] if version else [])]
    found = reader.search("Questionnaire", params)
    return found[-1] if found else None


def _check_in_page(
    caller: PortalCaller,
    plan: dict[str, Any],
    questionnaire: dict[str, Any],
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    form = views.check_in_form(plan, questionnaire, values, errors)
    return render("check_in.html", status, form=form, nav=patient_nav("check-in", caller))


@router.get("/check-in")
def check_in_choice(request: Request) -> Response:
    """The check-in of the patient's plan (a list when several plans have one)."""

    def build(caller: PortalCaller, ctx: FhirContext) -> Response:
        reader = PortalReader(ctx)
        choices = []
        for plan in active_plans(reader, caller.patient_id):
            questionnaire = plan_questionnaire(ctx, reader, plan)
            if questionnaire is not None:
                choices.append((plan, questionnaire))
        if len(choices) == 1:
            return _check_in_page(caller, *choices[0])
        plans = [(str(p["id"]), views.plan_title(p)) for p, _ in choices]
        return render("check_in_choice.html", plans=plans, nav=patient_nav("check-in", caller))

    return _patient_page(request, build)


@router.get("/check-in/{plan_id}")
def check_in_form(request: Request, plan_id: str) -> Response:
    def build(caller: PortalCaller, ctx: FhirContext) -> Response:
        reader = PortalReader(ctx)
        plan = reader.read("CarePlan", plan_id)
        questionnaire = plan_questionnaire(ctx, reader, plan)
        if questionnaire is None:
            return error_page(404, "This plan has no daily check-in.")
        return _check_in_page(caller, plan, questionnaire)

    return _patient_page(request, build)


@router.post("/check-in/{plan_id}")
async def check_in_send(request: Request, plan_id: str) -> Response:
    """Send the check-in: the same use case as ``CarePlan/$check-in`` (stored, evaluated,
    one alert per event), then the advice for the patient instead of a thank-you when a
    warning sign shows."""

    def build(form: dict[str, str]) -> Response:
        caller = patient_caller(request)
        caller.check_csrf(form)
        ctx = portal_context(request, caller.access)
        services = ctx.services
        zone = zone_of(services)
        try:
            ctx.begin_write()
            reader = PortalReader(ctx)
            plan = reader.read("CarePlan", plan_id)
            questionnaire = plan_questionnaire(ctx, reader, plan)
            if questionnaire is None:
                return error_page(404, "This plan has no daily check-in.")
            questions = views.check_in_form(plan, questionnaire).questions
            items, errors = views.response_from_form(questions, form)
            if not items and not errors:
                errors["_form"] = "Please answer at least one question."
            if errors:
                return _check_in_page(
                    caller, plan, questionnaire, values=form, errors=errors, status=422
                )
            record = load_record(reader, caller.patient_id, plan_id=plan_id, contacts=True)
            phones = views.help_view(record.plans, record.resolved).phones
            authored = services.now().astimezone(zone).isoformat(timespec="seconds")
            response = {
                "resourceType": "QuestionnaireResponse",
                "authored": authored,
                "item": items,
            }
            outcome = check_in(ctx, plan_id, response)
            ctx.commit()
        finally:
            ctx.close()
        view = views.check_in_result_view(outcome.result, phones)
        return render("check_in_result.html", view=view, nav=patient_nav("check-in", caller))

    return await form_page(request, build)


# -- the care team's alerts -------------------------------------------------------------------

ALERT_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category|alert"
_PRIORITY_RANK = {"stat": 0, "asap": 1, "urgent": 2, "routine": 3}


def clinician_nav(current: str, caller: PortalCaller) -> dict[str, Any]:
    return {"current": current, "csrf": caller.csrf, "kind": "clinician", "via": caller.via}


@router.get("/alerts")
def alerts(request: Request) -> Response:
    def page() -> Response:
        caller = clinician_caller(request)
        ctx = portal_context(request, caller.access)
        ctx.read_only = True
        try:
            reader = PortalReader(ctx)
            found = reader.search(
                "Communication", [("category", ALERT_CATEGORY), ("status", "in-progress")]
            )
            zone = zone_of(ctx.services)
            items = []
            for communication in found:
                patient = reader.resolve(str((communication.get("subject") or {}).get("reference")))
                response = next(
                    (
                        reader.resolve(str(r.get("reference")))
                        for r in communication.get("about") or []
                        if str(r.get("reference", "")).startswith("QuestionnaireResponse/")
                    ),
                    None,
                )
                items.append(views.alert_item(communication, patient, response, zone))
            items.sort(key=lambda a: (_PRIORITY_RANK.get(a.priority, 9), a.sent or ""))
            return render("alerts.html", alerts=items, nav=clinician_nav("alerts", caller))
        finally:
            ctx.close()

    return guarded_page(page)


@router.post("/alerts/{communication_id}/acknowledge")
async def acknowledge(request: Request, communication_id: str) -> Response:
    """Acknowledge an alert: the Communication completed, its Flag inactive (updates)."""

    def build(form: dict[str, str]) -> Response:
        caller = clinician_caller(request)
        caller.check_csrf(form)
        ctx = portal_context(request, caller.access)
        now = ctx.services.now()
        try:
            ctx.begin_write()
            reader = PortalReader(ctx)
            stored = guarded_read(ctx, "Communication", communication_id)
            assert stored.raw is not None
            communication = jsonio.loads(stored.raw)
            if communication.get("status") == "in-progress":
                update_resource(
                    ctx,
                    views.alert_acknowledged(communication, now),
                    communication_id,
                    stored.version,
                )
                for identifier in communication.get("identifier") or []:
                    token = f"{identifier.get('system')}|{identifier.get('value')}"
                    for flag in reader.search(
                        "Flag", [("identifier", token), ("status", "active")]
                    ):
                        update_resource(ctx, views.flag_closed(flag, now), str(flag["id"]), None)
                ctx.commit()
        finally:
            ctx.close()
        return RedirectResponse("/portal/alerts", status_code=303)

    return await form_page(request, build)


@router.get("/alerts/sign-in")
def clinician_sign_in_form() -> Response:
    return render("clinician_sign_in.html", error=None, nav=None)


@router.post("/alerts/sign-in")
async def clinician_sign_in(request: Request) -> Response:
    """Keep a care-team token (pasted once) in an HttpOnly cookie for the alerts page."""

    def build(form: dict[str, str]) -> Response:
        token = form.get("token", "").strip()
        try:
            clinician_token_access(request, token)
        except NotSignedIn as refused:
            return render("clinician_sign_in.html", refused.status, error=refused.message, nav=None)
        response = RedirectResponse("/portal/alerts", status_code=303)
        response.set_cookie(
            CLINICIAN_COOKIE,
            token,
            path=f"{COOKIE_PATH}/alerts",
            secure=secure_cookies(request, _services(request)),
            httponly=True,
            samesite="strict",
        )
        return response

    return await form_page(request, build)


@router.post("/alerts/sign-out")
async def clinician_sign_out(request: Request) -> Response:
    def build(form: dict[str, str]) -> Response:
        cookie = request.cookies.get(CLINICIAN_COOKIE)
        if cookie and form.get("csrf") != csrf_token(cookie):
            raise NotSignedIn("csrf", "This form has expired. Reload the page and try again.", 403)
        response = render("signed_out.html", nav=None)
        response.delete_cookie(
            CLINICIAN_COOKIE, path=f"{COOKIE_PATH}/alerts", httponly=True, samesite="strict"
        )
        return response

    return await form_page(request, build)


@router.get("/{anything:path}")
def not_found(anything: str) -> Response:
    return error_page(404, _ERROR_MESSAGES[404])
