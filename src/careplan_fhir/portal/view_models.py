"""What each portal page shows, built from FHIR resources and ``now`` (pure; docs/portal.md).

Every function here takes resources as dicts (as stored), the moment and the patients' time zone,
and returns frozen dataclasses the templates render; nothing reads a database, a request or a
clock. The resources are those an attached plan holds (docs/apply.md): a CarePlan whose
activities are Tasks (instructions, supplies) or inline details (prohibitions, warning signs),
Goals, the education Communication, the template's check-in Questionnaire.

Wording is plain and is the plan's own: texts are the activity and Task descriptions as the
clinician's template wrote them; thresholds are the ones bound in the plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any

from careplan_fhir.apply.engine import (
    ACTIVITY_TIMING_URL,
    WARNING_SIGN_URL,
    date_text,
    temperature_text,
)
from careplan_fhir.fhir.dates import DateFormatError, format_instant, parse_range
from careplan_fhir.workflows.check_in import (
    HEADLINE_BY_URGENCY,
    CheckInResult,
    SignCondition,
    warning_signs,
)

INSTRUCTION_KIND = "https://careplan-fhir.org/fhir/CodeSystem/instruction-kind"
LIFTED_WHEN_URL = "https://careplan-fhir.org/fhir/StructureDefinition/lifted-when"
UCUM = "http://unitsofmeasure.org"

#: Headings for the instruction kinds (codes of profiles/CodeSystem-instruction-kind.json), in
#: the order the "My plan" page lists them.
KIND_HEADINGS: dict[str, str] = {
    "medication": "Medicines",
    "activity": "Moving around",
    "exercise": "Exercise",
    "wound-care": "Caring for your wound",
    "hygiene": "Washing and bathing",
    "diet": "Eating and drinking",
    "bowel": "Bowel care",
    "monitoring": "Keeping watch",
    "follow-up": "Follow-up",
    "restriction": "Limits",
    "education": "Learning about your recovery",
    "other": "Other things to do",
}
SUPPLIES = "supplies"
WARNING_SIGN = "warning-sign"

#: Task statuses a patient still has to act on (https://hl7.org/fhir/R4/valueset-task-status.html).
OPEN_TASK_STATUSES = frozenset(
    {"draft", "requested", "received", "accepted", "ready", "in-progress"}
)
#: The note a patient's tick leaves on a repeating Task (it stays open for the next day).
DONE_FOR_TODAY = "Done for today"
#: Warning-sign priority → the help page's section.
EMERGENCY, CALL_TEAM, TELL_TEAM = "emergency", "call-care-team", "tell-care-team"
SECTION_BY_PRIORITY = {"stat": EMERGENCY, "asap": CALL_TEAM, "urgent": CALL_TEAM}
_COMPARISON = {
    ">=": "{} or higher",
    ">": "higher than {}",
    "<=": "{} or lower",
    "<": "lower than {}",
}
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


# -- small readers ---------------------------------------------------------------------------


def parse_moment(text: Any) -> datetime | None:
    """The start of a FHIR date/dateTime/instant as an aware UTC datetime (None if absent)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        low, _ = parse_range(text)
    except DateFormatError:
        return None
    return low.replace(tzinfo=UTC)


def local_date(moment: datetime, zone: tzinfo) -> date:
    return moment.astimezone(zone).date()


def day_text(day: date) -> str:
    """``Monday 2 March 2026``."""
    moment = datetime.combine(day, time(12))
    return f"{_WEEKDAYS[day.weekday()]} {date_text(moment)}"


def _date_text(moment: datetime, zone: tzinfo) -> str:
    day = local_date(moment, zone)
    return date_text(datetime.combine(day, time(12)))


def extension(element: Mapping[str, Any], url: str) -> dict[str, Any] | None:
    for found in element.get("extension") or []:
        if isinstance(found, dict) and found.get("url") == url:
            return found
    return None


def reference_id(reference: Any, resource_type: str) -> str | None:
    """The id of a local reference ``Type/id`` (or ``.../Type/id``) to ``resource_type``."""
    if not isinstance(reference, dict):
        return None
    text = reference.get("reference")
    if not isinstance(text, str):
        return None
    parts = text.split("/")
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return parts[-1]
    return None


def kind_of(concept: Any) -> str | None:
    """The instruction-kind code of a CodeableConcept, if it has one."""
    if not isinstance(concept, dict):
        return None
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and coding.get("system") == INSTRUCTION_KIND:
            code = coding.get("code")
            return str(code) if code else None
    return None


def human_name(resource: Mapping[str, Any] | None) -> str:
    """``Dr. Jonas Sample``: a HumanName's text, else prefix, given and family names."""
    if not resource:
        return ""
    names = resource.get("name")
    if isinstance(names, str):
        return names  # Organization, CareTeam
    for name in names or []:
        if not isinstance(name, dict):
            continue
        if name.get("text"):
            return str(name["text"])
        parts = [*(name.get("prefix") or []), *(name.get("given") or [])]
        if name.get("family"):
            parts.append(name["family"])
        if parts:
            return " ".join(str(p) for p in parts)
    return ""


def patient_first_name(patient: Mapping[str, Any] | None) -> str:
    for name in (patient or {}).get("name") or []:
        if isinstance(name, dict) and name.get("given"):
            return str(name["given"][0])
    return human_name(patient)


# -- Today ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskItem:
    """One thing to do, as the Today page lists it."""

    id: str
    text: str
    kind: str
    heading: str
    #: ``overdue`` | ``due`` | ``done`` | ``upcoming``
    state: str
    #: "Every day", "Was due 28 February 2026", "From 3 March 2026", or None.
    when: str | None
    repeating: bool


@dataclass(frozen=True)
class TodayView:
    patient_name: str
    today: str
    overdue: tuple[TaskItem, ...]
    due: tuple[TaskItem, ...]
    done: tuple[TaskItem, ...]
    upcoming: tuple[TaskItem, ...]
    plan_count: int

    @property
    def nothing_to_do(self) -> bool:
        return not self.overdue and not self.due


@dataclass(frozen=True)
class Schedule:
    """When a Task applies: its start, its due time, and its repeat (activity-timing)."""

    start: datetime | None
    due: datetime | None
    repeat: Mapping[str, Any] | None
    repeat_end: datetime | None
    timing_text: str | None


def task_schedule(task: Mapping[str, Any]) -> Schedule:
    """Start (``executionPeriod.start``, else ``restriction.period.start``), due
    (``restriction.period.end``, else ``executionPeriod.end`` of an open Task) and repeat
    (the ``activity-timing`` extension, when it repeats by a period: "every day")."""
    execution = task.get("executionPeriod") or {}
    restriction = (task.get("restriction") or {}).get("period") or {}
    start = parse_moment(execution.get("start")) or parse_moment(restriction.get("start"))
    due = parse_moment(restriction.get("end"))
    if due is None and task.get("status") in OPEN_TASK_STATUSES:
        due = parse_moment(execution.get("end"))
    timing = (extension(task, ACTIVITY_TIMING_URL) or {}).get("valueTiming") or {}
    repeat = timing.get("repeat") if isinstance(timing.get("repeat"), dict) else None
    if repeat is not None and not repeat.get("periodUnit"):
        repeat = None  # "20 minutes at a time": a duration per occurrence, not a schedule
    repeat_end = parse_moment(((repeat or {}).get("boundsPeriod") or {}).get("end"))
    text = (timing.get("code") or {}).get("text")
    return Schedule(start, due, repeat, repeat_end, str(text) if text else None)


def done_for_day(task: Mapping[str, Any], day: date, zone: tzinfo) -> bool:
    """Whether a repeating Task carries the patient's tick for ``day``."""
    for note in task.get("note") or []:
        moment = parse_moment(note.get("time")) if isinstance(note, dict) else None
        if moment and note.get("text") == DONE_FOR_TODAY and local_date(moment, zone) == day:
            return True
    return False


def completed_on(task: Mapping[str, Any]) -> datetime | None:
    return parse_moment((task.get("executionPeriod") or {}).get("end")) or parse_moment(
        task.get("lastModified")
    )


def task_text(task: Mapping[str, Any]) -> str:
    text = task.get("description") or (task.get("code") or {}).get("text") or "A task"
    return str(text)


def _repeat_words(schedule: Schedule) -> str:
    repeat = schedule.repeat or {}
    if repeat.get("periodUnit") == "d" and repeat.get("period") in (1, None):
        times = repeat.get("frequency") or 1
        return "Every day" if times == 1 else f"{times} times a day"
    return (schedule.timing_text or "Regularly").capitalize()


def classify_task(task: Mapping[str, Any], now: datetime, zone: tzinfo) -> TaskItem | None:
    """Where a Task belongs on the Today page (None: not shown today)."""
    status = task.get("status")
    if status not in OPEN_TASK_STATUSES and status != "completed":
        return None
    today = local_date(now, zone)
    schedule = task_schedule(task)
    kind = kind_of(task.get("code")) or "other"
    if kind in (SUPPLIES, WARNING_SIGN):
        return None  # supplies are the "My plan" checklist; signs the help page
    heading = KIND_HEADINGS.get(kind, "Other things to do")
    starts = local_date(schedule.start, zone) if schedule.start else None
    state: str
    when: str | None = None
    if schedule.repeat is not None:
        if schedule.repeat_end is not None and local_date(schedule.repeat_end, zone) < today:
            return None
        if status == "completed":
            ended = completed_on(task)
            if ended is None or local_date(ended, zone) != today:
                return None
            state = "done"
        elif starts is not None and starts > today:
            state, when = "upcoming", f"From {_date_text(schedule.start, zone)}"  # type: ignore[arg-type]
        else:
            state = "done" if done_for_day(task, today, zone) else "due"
        if when is None:
            when = _repeat_words(schedule)
    elif status == "completed":
        ended = completed_on(task)
        if ended is None or local_date(ended, zone) != today:
            return None
        state = "done"
    elif starts is not None and starts > today:
        state, when = "upcoming", f"From {_date_text(schedule.start, zone)}"  # type: ignore[arg-type]
    elif schedule.due is not None and local_date(schedule.due, zone) < today:
        state, when = "overdue", f"Was due {_date_text(schedule.due, zone)}"
    else:
        state = "due"
        if schedule.due is not None:
            due_day = local_date(schedule.due, zone)
            when = "Due today" if due_day == today else f"Due by {_date_text(schedule.due, zone)}"
    return TaskItem(
        id=str(task.get("id")),
        text=task_text(task),
        kind=kind,
        heading=heading,
        state=state,
        when=when,
        repeating=schedule.repeat is not None,
    )


def today_view(
    patient: Mapping[str, Any] | None,
    plans: Sequence[Mapping[str, Any]],
    tasks: Iterable[Mapping[str, Any]],
    now: datetime,
    zone: tzinfo,
    *,
    upcoming_days: int = 7,
) -> TodayView:
    """The Today page: overdue, due today, done today, and what starts within a week."""
    today = local_date(now, zone)
    horizon = today + timedelta(days=upcoming_days)
    order = _plan_task_order(plans)
    items = []
    for task in tasks:
        item = classify_task(task, now, zone)
        if item is None:
            continue
        if item.state == "upcoming":
            start = task_schedule(task).start
            if start is None or local_date(start, zone) > horizon:
                continue
        items.append(item)
    items.sort(key=lambda item: order.get(item.id, len(order)))
    return TodayView(
        patient_name=patient_first_name(patient),
        today=day_text(today),
        overdue=tuple(i for i in items if i.state == "overdue"),
        due=tuple(i for i in items if i.state == "due"),
        done=tuple(i for i in items if i.state == "done"),
        upcoming=tuple(i for i in items if i.state == "upcoming"),
        plan_count=len(plans),
    )


def _plan_task_order(plans: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Task id → its position in the plans' activity lists (the template's order)."""
    order: dict[str, int] = {}
    for plan in plans:
        for activity in plan.get("activity") or []:
            task_id = reference_id((activity or {}).get("reference"), "Task")
            if task_id is not None and task_id not in order:
                order[task_id] = len(order)
    return order


def task_marked_done(
    task: Mapping[str, Any], now: datetime, zone: tzinfo, patient_reference: str
) -> dict[str, Any] | None:
    """The Task after the patient's tick (None when there is nothing to change).

    A one-off Task becomes ``completed`` (``executionPeriod.end`` the moment). A repeating one
    ("every day") stays open for the next day: it becomes ``in-progress`` and carries a note
    :data:`DONE_FOR_TODAY` with the moment. Only elements a patient may change on her own Task
    are touched (rest/authorization.py ``PATIENT_TASK_ELEMENTS``).
    """
    status = task.get("status")
    if status not in OPEN_TASK_STATUSES:
        return None
    instant = format_instant(now)
    updated = dict(task)
    updated["lastModified"] = instant
    if task_schedule(task).repeat is not None:
        if done_for_day(task, local_date(now, zone), zone):
            return None
        if status in ("draft", "requested", "received", "accepted", "ready"):
            updated["status"] = "in-progress"
        note = {"authorReference": {"reference": patient_reference}, "time": instant}
        updated["note"] = [*(task.get("note") or []), {**note, "text": DONE_FOR_TODAY}]
        return updated
    updated["status"] = "completed"
    period = dict(task.get("executionPeriod") or {})
    start = parse_moment(period.get("start"))
    if start is not None and start > now:
        period["start"] = instant
    period["end"] = instant
    updated["executionPeriod"] = period
    return updated


# -- My plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    text: str
    #: "Every day", "From 2 March 2026", "The day you get home" ...
    when: str | None = None
    task_id: str | None = None
    done: bool = False


@dataclass(frozen=True)
class InstructionGroup:
    kind: str
    heading: str
    items: tuple[Instruction, ...]


@dataclass(frozen=True)
class Prohibition:
    text: str
    #: "Until 15 March 2026", "Until your care team says the site has healed".
    until: str


@dataclass(frozen=True)
class Supply:
    text: str
    task_id: str | None
    have: bool


@dataclass(frozen=True)
class GoalItem:
    text: str
    target: str | None
    reached: bool


@dataclass(frozen=True)
class TextSection:
    heading: str | None
    paragraphs: tuple[str, ...] = ()
    items: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlanView:
    id: str
    title: str
    description: str | None
    starts: str | None
    ends: str | None
    goals: tuple[GoalItem, ...]
    groups: tuple[InstructionGroup, ...]
    prohibitions: tuple[Prohibition, ...]
    supplies: tuple[Supply, ...]
    education: tuple[TextSection, ...]


def plan_title(plan: Mapping[str, Any]) -> str:
    return str(plan.get("title") or "Your recovery plan")


def dont_text(text: str) -> str:
    """A prohibition as the patient reads it: "Do not drive …" → "Don't drive …"."""
    text = text.strip()
    if text.startswith("Do not "):
        return "Don't " + text[len("Do not ") :]
    return text


def prohibition_until(detail: Mapping[str, Any], zone: tzinfo) -> str:
    """When a prohibition ends: its period's end, its lifted-when condition, or ask."""
    end = parse_moment((detail.get("scheduledPeriod") or {}).get("end"))
    if end is not None:
        return f"Until {_date_text(end, zone)}"
    lifted = (extension(detail, LIFTED_WHEN_URL) or {}).get("valueString")
    if lifted:
        return f"Until {lifted}"
    return "Until your care team tells you it is safe"


def _detail_when(detail: Mapping[str, Any], now: datetime, zone: tzinfo) -> str | None:
    if detail.get("scheduledString"):
        return str(detail["scheduledString"])
    start = parse_moment((detail.get("scheduledPeriod") or {}).get("start"))
    if start is not None and start > now:
        return f"From {_date_text(start, zone)}"
    return None


def _task_when(task: Mapping[str, Any], now: datetime, zone: tzinfo) -> str | None:
    schedule = task_schedule(task)
    if schedule.repeat is not None:
        words = _repeat_words(schedule)
        if schedule.start is not None and schedule.start > now:
            return f"{words}, from {_date_text(schedule.start, zone)}"
        return words
    if schedule.start is not None and schedule.start > now:
        return f"From {_date_text(schedule.start, zone)}"
    if schedule.due is not None:
        return f"By {_date_text(schedule.due, zone)}"
    return None


def goal_item(goal: Mapping[str, Any], zone: tzinfo) -> GoalItem:
    text = (goal.get("description") or {}).get("text") or "A goal"
    targets = []
    for target in goal.get("target") or []:
        if not isinstance(target, dict):
            continue
        if target.get("detailString"):
            targets.append(str(target["detailString"]))
        due = parse_moment(target.get("dueDate"))
        if due is not None:
            targets.append(f"by {_date_text(due, zone)}")
    reached = goal.get("lifecycleStatus") == "completed" or (
        kind_code(goal.get("achievementStatus")) == "achieved"
    )
    return GoalItem(str(text), ", ".join(targets) or None, reached)


def kind_code(concept: Any) -> str | None:
    for coding in (concept or {}).get("coding") or []:
        if isinstance(coding, dict) and coding.get("code"):
            return str(coding["code"])
    return None


def education_sections(communications: Iterable[Mapping[str, Any]]) -> tuple[TextSection, ...]:
    """The education Communication's payloads: "Heading:" lines, "- " items, paragraphs."""
    sections = []
    for communication in communications:
        for payload in communication.get("payload") or []:
            text = (payload or {}).get("contentString")
            if not isinstance(text, str) or not text.strip():
                continue
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            heading = None
            if lines and lines[0].endswith(":"):
                heading = lines.pop(0).rstrip(":")
            items = tuple(line[2:].strip() for line in lines if line.startswith("- "))
            paragraphs = tuple(line for line in lines if not line.startswith("- "))
            sections.append(TextSection(heading, paragraphs, items))
    return tuple(sections)


def plan_view(
    plan: Mapping[str, Any],
    tasks_by_id: Mapping[str, Mapping[str, Any]],
    goals_by_id: Mapping[str, Mapping[str, Any]],
    education: Iterable[Mapping[str, Any]],
    now: datetime,
    zone: tzinfo,
) -> PlanView:
    """The "My plan" page of one plan."""
    grouped: dict[str, list[Instruction]] = {}
    prohibitions: list[Prohibition] = []
    supplies: list[Supply] = []
    for activity in plan.get("activity") or []:
        if not isinstance(activity, dict):
            continue
        task_id = reference_id(activity.get("reference"), "Task")
        if task_id is not None:
            task = tasks_by_id.get(task_id)
            if task is None or task.get("status") in ("cancelled", "entered-in-error"):
                continue
            kind = kind_of(task.get("code")) or "other"
            done = task.get("status") == "completed"
            if kind == SUPPLIES:
                supplies.append(Supply(supply_text(task_text(task)), task_id, done))
                continue
            if kind == WARNING_SIGN:
                continue
            when = _task_when(task, now, zone)
            grouped.setdefault(kind, []).append(Instruction(task_text(task), when, task_id, done))
            continue
        detail = activity.get("detail")
        if not isinstance(detail, dict) or detail.get("status") in ("cancelled", "stopped"):
            continue
        kind = kind_of(detail.get("code")) or "other"
        text = detail.get("description") or (detail.get("code") or {}).get("text")
        if not text or kind == WARNING_SIGN or extension(detail, WARNING_SIGN_URL):
            continue
        if detail.get("doNotPerform"):
            prohibitions.append(Prohibition(dont_text(str(text)), prohibition_until(detail, zone)))
        elif kind == SUPPLIES:
            supplies.append(Supply(supply_text(str(text)), None, False))
        else:
            item = Instruction(str(text), _detail_when(detail, now, zone))
            grouped.setdefault(kind, []).append(item)
    order = list(KIND_HEADINGS)
    groups = tuple(
        InstructionGroup(kind, KIND_HEADINGS.get(kind, "Other things to do"), tuple(items))
        for kind, items in sorted(
            grouped.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)
        )
    )
    goals = []
    for reference in plan.get("goal") or []:
        goal_id = reference_id(reference, "Goal")
        goal = goals_by_id.get(goal_id or "")
        if goal is not None and goal.get("lifecycleStatus") not in ("cancelled", "rejected"):
            goals.append(goal_item(goal, zone))
    period = plan.get("period") or {}
    start = parse_moment(period.get("start"))
    end = parse_moment(period.get("end"))
    return PlanView(
        id=str(plan.get("id")),
        title=plan_title(plan),
        description=str(plan["description"]) if plan.get("description") else None,
        starts=_date_text(start, zone) if start else None,
        ends=_date_text(end, zone) if end else None,
        goals=tuple(goals),
        groups=groups,
        prohibitions=tuple(prohibitions),
        supplies=tuple(supplies),
        education=education_sections(education),
    )


def supply_text(text: str) -> str:
    """ "Have at home: a thermometer" → "A thermometer"."""
    for prefix in ("Have at home:", "Have these at home:"):
        if text.startswith(prefix):
            rest = text[len(prefix) :].strip()
            return rest[:1].upper() + rest[1:]
    return text


# -- When to get help -------------------------------------------------------------------------


@dataclass(frozen=True)
class SignItem:
    #: The sign, the first sentence of the plan's own description ("Fever").
    text: str
    #: The rest of the plan's sentence ("Call your care team if your temperature is ...").
    advice: str
    #: "Temperature 38.0 °C / 100.4 °F or higher", for a measurable sign.
    threshold: str | None


def sign_item(text: str, description: str, condition: SignCondition | None) -> SignItem:
    """The plan's sentence split into the sign and what to do ("Fever." / "Call ...")."""
    head, dot, rest = description.partition(". ")
    if not dot:
        head, rest = description.rstrip("."), ""
    return SignItem(head.strip() or text, rest.strip(), threshold_text(condition))


@dataclass(frozen=True)
class Contact:
    name: str
    detail: str | None
    phones: tuple[str, ...]
    emails: tuple[str, ...]


@dataclass(frozen=True)
class HelpView:
    emergency: tuple[SignItem, ...]
    call_team: tuple[SignItem, ...]
    tell_team: tuple[SignItem, ...]
    contacts: tuple[Contact, ...]

    @property
    def phones(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for c in self.contacts for p in c.phones))


def threshold_text(condition: SignCondition | None) -> str | None:
    """ "Temperature 38.0 °C / 100.4 °F or higher" from a bound condition (None otherwise)."""
    if condition is None or condition.comparator not in _COMPARISON:
        return None
    words = _COMPARISON[condition.comparator]
    if condition.variable == "temperature" and condition.unit in ("Cel", "[degF]"):
        both = temperature_text({"value": condition.threshold, "code": condition.unit})
        given, _, converted = both.partition(" (")
        return "Temperature " + words.format(f"{given} / {converted.rstrip(')')}")
    if condition.variable == "pain_score":
        value = condition.threshold.normalize()
        return "Pain " + words.format(f"{format(value, 'f')} out of 10")
    return None


def help_view(
    plans: Sequence[Mapping[str, Any]], resolved: Mapping[str, Mapping[str, Any]]
) -> HelpView:
    """Warning signs by urgency (911, call the care team now, tell the care team) and the
    contacts the plans name (``resolved``: reference text → the resource read)."""
    sections: dict[str, list[SignItem]] = {EMERGENCY: [], CALL_TEAM: [], TELL_TEAM: []}
    seen: set[str] = set()
    for plan in plans:
        for sign in warning_signs(plan):
            if sign.description in seen:
                continue
            seen.add(sign.description)
            item = sign_item(sign.text, sign.description, sign.condition)
            sections[SECTION_BY_PRIORITY.get(sign.priority, TELL_TEAM)].append(item)
    contacts: list[Contact] = []
    for plan in plans:
        for contact in plan_contacts(plan, resolved):
            if contact not in contacts:
                contacts.append(contact)
    return HelpView(
        tuple(sections[EMERGENCY]),
        tuple(sections[CALL_TEAM]),
        tuple(sections[TELL_TEAM]),
        tuple(contacts),
    )


def contact_references(plan: Mapping[str, Any]) -> list[str]:
    """The references a plan's contacts come from: care teams, author, contributors."""
    candidates = [
        *(plan.get("careTeam") or []),
        plan.get("author"),
        *(plan.get("contributor") or []),
    ]
    references = []
    for candidate in candidates:
        text = (candidate or {}).get("reference") if isinstance(candidate, dict) else None
        if isinstance(text, str) and text.split("/")[0] != "Patient" and text not in references:
            references.append(text)
    return references


def _telecom(resource: Mapping[str, Any], system: str) -> tuple[str, ...]:
    return tuple(
        str(t["value"])
        for t in resource.get("telecom") or []
        if isinstance(t, dict) and t.get("system") == system and t.get("value")
    )


def plan_contacts(
    plan: Mapping[str, Any], resolved: Mapping[str, Mapping[str, Any]]
) -> list[Contact]:
    """Who to call, from the plan's care teams, author and contributors (Patients left out)."""
    contacts = []
    for reference in contact_references(plan):
        resource = resolved.get(reference)
        if resource is None:
            continue
        kind = resource.get("resourceType")
        detail: str | None = None
        name = human_name(resource)
        if kind == "CareTeam":
            name = name or "Your care team"
            members = [
                str(p["member"]["display"])
                for p in resource.get("participant") or []
                if isinstance(p, dict)
                and isinstance(p.get("member"), dict)
                and p["member"].get("display")
                and not str(p["member"].get("reference", "")).startswith("Patient/")
            ]
            detail = ", ".join(members) or None
        elif kind == "PractitionerRole":
            name = str((resource.get("practitioner") or {}).get("display") or "Your clinician")
            organization = (resource.get("organization") or {}).get("display")
            detail = str(organization) if organization else None
        phones, emails = _telecom(resource, "phone"), _telecom(resource, "email")
        if not name and not phones and not emails:
            continue
        contacts.append(Contact(name or "Your care team", detail, phones, emails))
    return contacts


# -- Daily check-in ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    code: str
    display: str
    system: str | None


@dataclass(frozen=True)
class Question:
    """One question of the check-in form (a Questionnaire item)."""

    link_id: str
    text: str
    #: decimal | integer | choice | boolean | string | group
    type: str
    required: bool = False
    options: tuple[Option, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    #: The linkId whose answer this question needs ("exists" enableWhen), if any.
    needs: str | None = None
    items: tuple[Question, ...] = ()


@dataclass(frozen=True)
class CheckInForm:
    plan_id: str
    title: str
    description: str | None
    questions: tuple[Question, ...]
    #: Answers as typed (re-shown after a mistake), linkId → text.
    values: Mapping[str, str] = field(default_factory=dict)
    #: linkId → what to fix.
    errors: Mapping[str, str] = field(default_factory=dict)


def _integer_extension(item: Mapping[str, Any], name: str) -> int | None:
    found = extension(item, f"http://hl7.org/fhir/StructureDefinition/{name}")
    value = (found or {}).get("valueInteger")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def questions_of(items: Any) -> tuple[Question, ...]:
    """The Questionnaire's items as form questions (display items left out)."""
    questions = []
    for item in items or []:
        if not isinstance(item, dict) or item.get("type") == "display":
            continue
        needs = None
        for condition in item.get("enableWhen") or []:
            if condition.get("operator") == "exists" and condition.get("answerBoolean") is True:
                needs = str(condition.get("question"))
        options = tuple(
            Option(
                str(o["valueCoding"].get("code")),
                str(o["valueCoding"].get("display") or o["valueCoding"].get("code")),
                o["valueCoding"].get("system"),
            )
            for o in item.get("answerOption") or []
            if isinstance(o, dict) and isinstance(o.get("valueCoding"), dict)
        )
        questions.append(
            Question(
                link_id=str(item.get("linkId")),
                text=str(item.get("text") or item.get("linkId")),
                type=str(item.get("type")),
                required=bool(item.get("required")),
                options=options,
                minimum=_integer_extension(item, "minValue"),
                maximum=_integer_extension(item, "maxValue"),
                needs=needs,
                items=questions_of(item.get("item")),
            )
        )
    return tuple(questions)


def check_in_form(
    plan: Mapping[str, Any],
    questionnaire: Mapping[str, Any],
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
) -> CheckInForm:
    return CheckInForm(
        plan_id=str(plan.get("id")),
        title=plan_title(plan),
        description=str(questionnaire["description"]) if questionnaire.get("description") else None,
        questions=questions_of(questionnaire.get("item")),
        values=dict(values or {}),
        errors=dict(errors or {}),
    )


def _number(text: str) -> Decimal | None:
    cleaned = text.strip().replace(",", ".").rstrip("°").strip()
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _answer(question: Question, text: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the FHIR answer, None) or (None, what to fix) for one typed answer."""
    if question.type == "decimal":
        number = _number(text)
        if number is None:
            return None, "Enter a number, for example 37.2"
        return {"valueDecimal": number}, None
    if question.type == "integer":
        number = _number(text)
        if number is None or number != number.to_integral_value():
            return None, "Enter a whole number"
        value = int(number)
        low, high = question.minimum, question.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            return None, f"Choose a number from {low} to {high}"
        return {"valueInteger": value}, None
    if question.type == "choice":
        for option in question.options:
            if option.code == text:
                coding = {"code": option.code, "display": option.display}
                if option.system:
                    coding = {"system": option.system, **coding}
                return {"valueCoding": coding}, None
        return None, "Choose one of the answers"
    if question.type == "boolean":
        if text in ("yes", "no"):
            return {"valueBoolean": text == "yes"}, None
        return None, "Answer yes or no"
    return {"valueString": text}, None


def response_from_form(
    questions: Sequence[Question], form: Mapping[str, str]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """QuestionnaireResponse items from the posted form, and the mistakes by linkId (pure).

    Unanswered questions are left out; a required question is needed only when the question
    it depends on ("exists" enableWhen) was answered.
    """
    errors: dict[str, str] = {}

    def walk(nodes: Sequence[Question]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for question in nodes:
            if question.type == "group":
                children = walk(question.items)
                if children:
                    items.append(
                        {"linkId": question.link_id, "text": question.text, "item": children}
                    )
                continue
            text = (form.get(question.link_id) or "").strip()
            enabled = question.needs is None or bool((form.get(question.needs) or "").strip())
            if not text:
                if question.required and enabled:
                    errors[question.link_id] = "Please answer this question"
                continue
            answer, problem = _answer(question, text)
            if answer is None:
                errors[question.link_id] = problem or "Please check this answer"
                continue
            items.append({"linkId": question.link_id, "text": question.text, "answer": [answer]})
        return items

    return walk(questions), errors


@dataclass(frozen=True)
class CheckInResultView:
    red_flag: bool
    #: emergency | call-care-team | tell-care-team | None
    urgency: str | None
    headline: str
    #: The plan's sentences for the signs shown (highest priority first).
    signs: tuple[str, ...]
    phones: tuple[str, ...]


def check_in_result_view(result: CheckInResult, phones: Sequence[str]) -> CheckInResultView:
    """What the patient sees after sending the check-in (the workflow's own advice)."""
    if not result.red_flag:
        return CheckInResultView(False, None, "Thank you for checking in.", (), tuple(phones))
    urgency = result.urgency or CALL_TEAM
    return CheckInResultView(
        True,
        urgency,
        HEADLINE_BY_URGENCY.get(urgency, "Call your care team now."),
        tuple(s.description for s in result.triggered),
        tuple(phones),
    )


# -- the care team's alerts -------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerLine:
    question: str
    answer: str


@dataclass(frozen=True)
class AlertItem:
    id: str
    version: str | None
    priority: str
    sent: str | None
    patient: str
    patient_id: str | None
    plan_id: str | None
    signs: tuple[str, ...]
    summary: tuple[str, ...]
    answers: tuple[AnswerLine, ...]


def _answer_text(answer: Mapping[str, Any]) -> str:
    if "valueBoolean" in answer:
        return "Yes" if answer["valueBoolean"] else "No"
    if "valueCoding" in answer:
        coding = answer["valueCoding"] or {}
        return str(coding.get("display") or coding.get("code") or "")
    if "valueQuantity" in answer:
        quantity = answer["valueQuantity"] or {}
        return (
            f"{quantity.get('value')} {quantity.get('unit') or quantity.get('code') or ''}".strip()
        )
    for key in sorted(answer):
        if key.startswith("value"):
            return str(answer[key])
    return ""


def answer_lines(response: Mapping[str, Any] | None) -> tuple[AnswerLine, ...]:
    """Each answered question of a QuestionnaireResponse, in order, groups flattened."""
    lines: list[AnswerLine] = []

    def walk(items: Any) -> None:
        for item in items or []:
            if not isinstance(item, dict):
                continue
            answers = [a for a in item.get("answer") or [] if isinstance(a, dict)]
            if answers:
                text = ", ".join(_answer_text(a) for a in answers)
                lines.append(AnswerLine(str(item.get("text") or item.get("linkId")), text))
                for answer in answers:
                    walk(answer.get("item"))
            walk(item.get("item"))

    walk((response or {}).get("item"))
    return tuple(lines)


def alert_item(
    communication: Mapping[str, Any],
    patient: Mapping[str, Any] | None,
    response: Mapping[str, Any] | None,
    zone: tzinfo,
) -> AlertItem:
    """One open alert with the answers behind it."""
    sent = parse_moment(communication.get("sent"))
    sent_text = None
    if sent is not None:
        local = sent.astimezone(zone)
        sent_text = f"{_date_text(sent, zone)}, {local:%H:%M}"
    plan_id = next(
        (
            reference_id(r, "CarePlan")
            for r in communication.get("basedOn") or []
            if reference_id(r, "CarePlan")
        ),
        None,
    )
    return AlertItem(
        id=str(communication.get("id")),
        version=(communication.get("meta") or {}).get("versionId"),
        priority=str(communication.get("priority") or "routine"),
        sent=sent_text,
        patient=human_name(patient) or "Unknown patient",
        patient_id=reference_id(communication.get("subject"), "Patient"),
        plan_id=plan_id,
        signs=tuple(
            str(r["text"]) for r in communication.get("reasonCode") or [] if (r or {}).get("text")
        ),
        summary=tuple(
            str(p["contentString"])
            for p in communication.get("payload") or []
            if isinstance(p, dict) and isinstance(p.get("contentString"), str)
        ),
        answers=answer_lines(response),
    )


def alert_acknowledged(communication: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The Communication once a clinician has seen it: completed, ``received`` now."""
    updated = dict(communication)
    updated["status"] = "completed"
    updated.setdefault("received", format_instant(now))
    return updated


def flag_closed(flag: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The alert's Flag once acknowledged: inactive, its period ended now."""
    updated = dict(flag)
    updated["status"] = "inactive"
    updated["period"] = {**(flag.get("period") or {}), "end": format_instant(now)}
    return updated
