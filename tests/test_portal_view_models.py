"""The portal's view models (pure): FHIR dicts and ``now`` in, what each page shows out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from careplan_fhir.apply.engine import ACTIVITY_TIMING_URL, TEMPLATE_ACTION_URL, WARNING_SIGN_URL
from careplan_fhir.portal import view_models as views
from careplan_fhir.workflows.check_in import CheckInAnswers, CheckInResult, TriggeredSign

UTC_ZONE = ZoneInfo("UTC")
NOW = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)  # a Tuesday morning
KIND = views.INSTRUCTION_KIND


def a_task(task_id: str, kind: str = "medication", **fields: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Task",
        "id": task_id,
        "status": "requested",
        "intent": "plan",
        "code": {"coding": [{"system": KIND, "code": kind}]},
        "description": f"Task {task_id}",
        "for": {"reference": "Patient/p"},
    }
    resource.update(fields)
    return resource


def daily(start: str = "2026-03-01T10:00:00Z", **bounds: str) -> list[dict[str, Any]]:
    return [
        {
            "url": ACTIVITY_TIMING_URL,
            "valueTiming": {
                "repeat": {
                    "boundsPeriod": {"start": start, **bounds},
                    "frequency": 1,
                    "period": 1,
                    "periodUnit": "d",
                },
                "code": {"text": "every day"},
            },
        }
    ]


def plan(**fields: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "CarePlan",
        "id": "plan-1",
        "status": "active",
        "intent": "plan",
        "title": "Going home",
        "subject": {"reference": "Patient/p"},
        "period": {"start": "2026-03-01T10:00:00Z"},
        "activity": [],
    }
    resource.update(fields)
    return resource


def sign(action: str, text: str, description: str, priority: str, condition: str | None = None):  # type: ignore[no-untyped-def]
    parts: list[dict[str, Any]] = [{"url": "priority", "valueCode": priority}]
    if condition:
        parts.append(
            {
                "url": "condition",
                "valueExpression": {"language": "text/fhirpath", "expression": condition},
            }
        )
    return {
        "extension": [{"url": TEMPLATE_ACTION_URL, "valueString": action}],
        "detail": {
            "extension": [{"url": WARNING_SIGN_URL, "extension": parts}],
            "code": {"coding": [{"system": KIND, "code": "warning-sign"}], "text": text},
            "status": "not-started",
            "description": description,
        },
    }


# -- Today --------------------------------------------------------------------------------------


def states(tasks: list[dict[str, Any]], now: datetime = NOW) -> dict[str, str]:
    view = views.today_view({"name": [{"given": ["Harriet"]}]}, [plan()], tasks, now, UTC_ZONE)
    found = {}
    for state in ("overdue", "due", "done", "upcoming"):
        for item in getattr(view, state):
            found[item.id] = state
    return found


def test_tasks_are_overdue_due_done_or_coming_up() -> None:
    tasks = [
        a_task("started", executionPeriod={"start": "2026-03-01T10:00:00Z"}),
        a_task("no-dates"),
        a_task("due-today", restriction={"period": {"end": "2026-03-03T18:00:00Z"}}),
        a_task("late", restriction={"period": {"end": "2026-03-02T18:00:00Z"}}),
        a_task("tomorrow", executionPeriod={"start": "2026-03-04T10:00:00Z"}),
        a_task("next-month", executionPeriod={"start": "2026-04-04T10:00:00Z"}),
        a_task("done-today", status="completed", executionPeriod={"end": "2026-03-03T08:00:00Z"}),
        a_task("done-before", status="completed", executionPeriod={"end": "2026-03-02T08:00:00Z"}),
        a_task("cancelled", status="cancelled"),
        a_task("thermometer", kind="supplies"),
    ]
    assert states(tasks) == {
        "started": "due",
        "no-dates": "due",
        "due-today": "due",
        "late": "overdue",
        "tomorrow": "upcoming",
        "done-today": "done",
    }


def test_what_each_task_says_about_when() -> None:
    view = views.today_view(
        None,
        [plan()],
        [
            a_task("due-today", restriction={"period": {"end": "2026-03-03T18:00:00Z"}}),
            a_task("due-later", restriction={"period": {"end": "2026-03-05T18:00:00Z"}}),
            a_task("late", restriction={"period": {"end": "2026-03-02T18:00:00Z"}}),
            a_task("tomorrow", executionPeriod={"start": "2026-03-04T10:00:00Z"}),
            a_task("daily", extension=daily()),
        ],
        NOW,
        UTC_ZONE,
    )
    when = {i.id: i.when for i in (*view.overdue, *view.due, *view.upcoming)}
    assert when == {
        "due-today": "Due today",
        "due-later": "Due by 5 March 2026",
        "late": "Was due 2 March 2026",
        "tomorrow": "From 4 March 2026",
        "daily": "Every day",
    }
    assert view.today == "Tuesday 3 March 2026"


def test_today_follows_the_patients_time_zone() -> None:
    late_evening = datetime(2026, 3, 3, 23, 30, tzinfo=ZoneInfo("America/Chicago"))  # 05:30Z
    task = a_task("t", restriction={"period": {"end": "2026-03-03T23:00:00Z"}})  # 17:00 local
    utc = views.today_view(None, [], [task], late_evening, UTC_ZONE)
    chicago = views.today_view(None, [], [task], late_evening, ZoneInfo("America/Chicago"))
    assert [i.id for i in utc.overdue] == ["t"]  # 4 March in UTC: 3 March has passed
    assert [i.id for i in chicago.due] == ["t"]  # still 3 March in Chicago
    assert chicago.today == "Tuesday 3 March 2026"


def test_a_daily_task_is_due_every_day_of_its_bounds() -> None:
    ticked = {"time": "2026-03-03T07:00:00Z", "text": views.DONE_FOR_TODAY}
    yesterday = {"time": "2026-03-02T07:00:00Z", "text": views.DONE_FOR_TODAY}
    tasks = [
        a_task("today-ticked", status="in-progress", extension=daily(), note=[ticked]),
        a_task("ticked-yesterday", status="in-progress", extension=daily(), note=[yesterday]),
        a_task("ended", extension=daily(end="2026-03-02T10:00:00Z")),
        a_task(
            "later",
            extension=daily(start="2026-03-05T10:00:00Z"),
            executionPeriod={"start": "2026-03-05T10:00:00Z"},
        ),
    ]
    assert states(tasks) == {
        "today-ticked": "done",
        "ticked-yesterday": "due",
        "later": "upcoming",
    }


def test_tasks_keep_the_plans_order() -> None:
    the_plan = plan(activity=[{"reference": {"reference": f"Task/{i}"}} for i in ("b", "c", "a")])
    view = views.today_view(
        None, [the_plan], [a_task("a"), a_task("b"), a_task("c")], NOW, UTC_ZONE
    )
    assert [i.id for i in view.due] == ["b", "c", "a"]
    assert views.today_view(None, [], [], NOW, UTC_ZONE).nothing_to_do


def test_ticking_a_one_off_task_completes_it() -> None:
    task = a_task("t", executionPeriod={"start": "2026-03-01T10:00:00Z"}, meta={"profile": ["x"]})
    done = views.task_marked_done(task, NOW, UTC_ZONE, "Patient/p")
    assert done is not None
    assert done["status"] == "completed"
    assert done["executionPeriod"] == {
        "start": "2026-03-01T10:00:00Z",
        "end": "2026-03-03T09:00:00.000Z",
    }
    assert done["lastModified"] == "2026-03-03T09:00:00.000Z"
    assert done["meta"] == {"profile": ["x"]}
    assert views.task_marked_done(done, NOW, UTC_ZONE, "Patient/p") is None
    assert (
        views.task_marked_done(a_task("c", status="cancelled"), NOW, UTC_ZONE, "Patient/p") is None
    )
    early = views.task_marked_done(
        a_task("e", executionPeriod={"start": "2026-03-04T10:00:00Z"}), NOW, UTC_ZONE, "Patient/p"
    )
    assert early is not None
    assert early["executionPeriod"]["start"] <= early["executionPeriod"]["end"]


def test_ticking_a_daily_task_leaves_it_open_for_tomorrow() -> None:
    task = a_task("t", extension=daily())
    done = views.task_marked_done(task, NOW, UTC_ZONE, "Patient/p")
    assert done is not None
    assert done["status"] == "in-progress"
    assert done["note"] == [
        {
            "authorReference": {"reference": "Patient/p"},
            "time": "2026-03-03T09:00:00.000Z",
            "text": views.DONE_FOR_TODAY,
        }
    ]
    assert views.task_marked_done(done, NOW + timedelta(hours=2), UTC_ZONE, "Patient/p") is None
    tomorrow = views.task_marked_done(done, NOW + timedelta(days=1), UTC_ZONE, "Patient/p")
    assert tomorrow is not None
    assert len(tomorrow["note"]) == 2
    # Only what a patient may change on her own Task.
    changed = {k for k in set(task) | set(tomorrow) if task.get(k) != tomorrow.get(k)}
    assert changed <= {"status", "note", "lastModified"}


# -- My plan -----------------------------------------------------------------------------------


def prohibition(text: str, **detail: Any) -> dict[str, Any]:
    return {
        "detail": {
            "kind": "Task",
            "code": {"coding": [{"system": KIND, "code": "activity"}]},
            "status": "not-started",
            "doNotPerform": True,
            "description": text,
            **detail,
        }
    }


def test_the_plan_groups_instructions_by_kind_with_prohibitions_and_supplies() -> None:
    tasks = {
        "walk": a_task(
            "walk",
            kind="activity",
            description="Walk a little farther each day.",
            extension=daily("2026-03-04T10:00:00Z"),
            executionPeriod={"start": "2026-03-04T10:00:00Z"},
        ),
        "pills": a_task("pills", description="Take your pain medicine as prescribed."),
        "wound": a_task(
            "wound", kind="wound-care", description="Keep the bandage dry.", status="completed"
        ),
        "thermometer": a_task(
            "thermometer", kind="supplies", description="Have at home: a thermometer that works"
        ),
        "old": a_task("old", status="cancelled"),
    }
    the_plan = plan(
        goal=[{"reference": "Goal/g1"}, {"reference": "Goal/g2"}],
        activity=[
            *({"reference": {"reference": f"Task/{i}"}} for i in tasks),
            prohibition(
                "Avoid lifting anything heavy for 2 weeks.",
                scheduledPeriod={"start": "2026-03-01T10:00:00Z", "end": "2026-03-15T10:00:00Z"},
            ),
            prohibition("Do not drive while you are taking opioid pain medicine."),
            prohibition(
                "No tub baths until your care team says the site has healed.",
                extension=[
                    {
                        "url": views.LIFTED_WHEN_URL,
                        "valueString": "your care team says the site has healed",
                    }
                ],
            ),
            sign("warn-1", "Fever", "Fever. Call your care team.", "urgent"),
        ],
    )
    goals = {
        "g1": {
            "resourceType": "Goal",
            "id": "g1",
            "lifecycleStatus": "active",
            "description": {"text": "Pain is controlled"},
            "target": [{"dueDate": "2026-03-10"}],
        },
        "g2": {
            "resourceType": "Goal",
            "id": "g2",
            "lifecycleStatus": "completed",
            "description": {"text": "Walk to the mailbox"},
        },
    }
    education = [
        {
            "payload": [
                {"contentString": "Going home\nYour recovery plan starts on 1 March 2026."},
                {"contentString": "What to do:\n- Rest today.\n- Drink water."},
            ]
        }
    ]
    view = views.plan_view(the_plan, tasks, goals, education, NOW, UTC_ZONE)
    assert [(g.heading, [i.text for i in g.items]) for g in view.groups] == [
        ("Medicines", ["Take your pain medicine as prescribed."]),
        ("Moving around", ["Walk a little farther each day."]),
        ("Caring for your wound", ["Keep the bandage dry."]),
    ]
    assert view.groups[1].items[0].when == "Every day, from 4 March 2026"
    assert view.groups[2].items[0].done
    assert [(p.text, p.until) for p in view.prohibitions] == [
        ("Avoid lifting anything heavy for 2 weeks.", "Until 15 March 2026"),
        (
            "Don't drive while you are taking opioid pain medicine.",
            "Until your care team tells you it is safe",
        ),
        (
            "No tub baths until your care team says the site has healed.",
            "Until your care team says the site has healed",
        ),
    ]
    assert view.supplies == (views.Supply("A thermometer that works", "thermometer", False),)
    assert view.goals == (
        views.GoalItem("Pain is controlled", "by 10 March 2026", False),
        views.GoalItem("Walk to the mailbox", None, True),
    )
    assert view.education == (
        views.TextSection(None, ("Going home", "Your recovery plan starts on 1 March 2026.")),
        views.TextSection("What to do", (), ("Rest today.", "Drink water.")),
    )
    assert view.starts == "1 March 2026"


# -- When to get help --------------------------------------------------------------------------


def test_signs_are_sorted_by_urgency_with_the_bound_thresholds() -> None:
    the_plan = plan(
        careTeam=[{"reference": "CareTeam/team"}],
        author={"reference": "Practitioner/dr"},
        contributor=[{"reference": "Patient/p"}],
        activity=[
            sign(
                "warn-1",
                "Fever",
                "Fever. Call your care team if your temperature is 38.0 °C (100.4 °F) or higher.",
                "urgent",
                "%temperature >= 38.0 'Cel'",
            ),
            sign(
                "warn-2", "Chest pain", "Sudden chest pain. Get emergency help right away.", "stat"
            ),
            sign(
                "warn-3",
                "Pain",
                "Pain that keeps you awake. Call your care team.",
                "asap",
                "%pain_score > 7",
            ),
            sign("warn-4", "Constipation", "No bowel movement for 3 days.", "routine"),
            sign(
                "warn-5",
                "Fever",
                "Fever. Call your care team.",
                "urgent",
                "%temperature >= 101.5 '[degF]'",
            ),
        ],
    )
    resolved = {
        "CareTeam/team": {
            "resourceType": "CareTeam",
            "name": "Spine team",
            "telecom": [{"system": "phone", "value": "555-0100"}],
            "participant": [
                {"member": {"reference": "Practitioner/dr", "display": "Dr. Jonas Sample"}},
                {"member": {"reference": "Patient/p", "display": "Harriet Example"}},
            ],
        },
        "Practitioner/dr": {
            "resourceType": "Practitioner",
            "name": [{"prefix": ["Dr."], "given": ["Jonas"], "family": "Sample"}],
            "telecom": [{"system": "email", "value": "dr@example.org"}],
        },
    }
    view = views.help_view([the_plan], resolved)
    assert [(s.text, s.advice) for s in view.emergency] == [
        ("Sudden chest pain", "Get emergency help right away.")
    ]
    assert [(s.text, s.threshold) for s in view.call_team] == [
        ("Fever", "Temperature 38.0 °C / 100.4 °F or higher"),
        ("Pain that keeps you awake", "Pain higher than 7 out of 10"),
        ("Fever", "Temperature 101.5 °F / 38.6 °C or higher"),
    ]
    assert [s.text for s in view.tell_team] == ["No bowel movement for 3 days"]
    assert view.contacts == (
        views.Contact("Spine team", "Dr. Jonas Sample", ("555-0100",), ()),
        views.Contact("Dr. Jonas Sample", None, (), ("dr@example.org",)),
    )
    assert view.phones == ("555-0100",)


# -- Daily check-in ----------------------------------------------------------------------------

QUESTIONNAIRE = {
    "resourceType": "Questionnaire",
    "description": "Answer once a day.",
    "item": [
        {
            "linkId": "body-temperature",
            "text": "What is your temperature today?",
            "type": "decimal",
        },
        {
            "linkId": "body-temperature-unit",
            "text": "Is that in °C or °F?",
            "type": "choice",
            "required": True,
            "enableWhen": [
                {"question": "body-temperature", "operator": "exists", "answerBoolean": True}
            ],
            "answerOption": [
                {
                    "valueCoding": {
                        "system": "http://unitsofmeasure.org",
                        "code": "Cel",
                        "display": "°C",
                    }
                },
                {
                    "valueCoding": {
                        "system": "http://unitsofmeasure.org",
                        "code": "[degF]",
                        "display": "°F",
                    }
                },
            ],
        },
        {
            "linkId": "pain-score",
            "text": "How bad is your pain?",
            "type": "integer",
            "extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/minValue", "valueInteger": 0},
                {"url": "http://hl7.org/fhir/StructureDefinition/maxValue", "valueInteger": 10},
            ],
        },
        {
            "linkId": "warning-signs",
            "text": "Have you had any of these?",
            "type": "group",
            "item": [
                {"linkId": "sign-warn-1", "text": "Chest pain", "type": "boolean"},
                {"linkId": "sign-warn-2", "text": "Redness", "type": "boolean"},
            ],
        },
    ],
}


def test_the_form_is_the_questionnaire() -> None:
    form = views.check_in_form(plan(), QUESTIONNAIRE)
    assert [q.link_id for q in form.questions] == [
        "body-temperature",
        "body-temperature-unit",
        "pain-score",
        "warning-signs",
    ]
    unit, pain, group = form.questions[1:]
    assert unit.needs == "body-temperature" and unit.required
    assert [o.display for o in unit.options] == ["°C", "°F"]
    assert (pain.minimum, pain.maximum) == (0, 10)
    assert [q.type for q in group.items] == ["boolean", "boolean"]


def test_answers_become_questionnaire_response_items() -> None:
    questions = views.check_in_form(plan(), QUESTIONNAIRE).questions
    items, errors = views.response_from_form(
        questions,
        {
            "body-temperature": "38,6",
            "body-temperature-unit": "Cel",
            "pain-score": "4",
            "sign-warn-1": "no",
            "sign-warn-2": "yes",
            "csrf": "x",
        },
    )
    assert errors == {}
    assert items == [
        {
            "linkId": "body-temperature",
            "text": "What is your temperature today?",
            "answer": [{"valueDecimal": Decimal("38.6")}],
        },
        {
            "linkId": "body-temperature-unit",
            "text": "Is that in °C or °F?",
            "answer": [
                {
                    "valueCoding": {
                        "system": "http://unitsofmeasure.org",
                        "code": "Cel",
                        "display": "°C",
                    }
                }
            ],
        },
        {"linkId": "pain-score", "text": "How bad is your pain?", "answer": [{"valueInteger": 4}]},
        {
            "linkId": "warning-signs",
            "text": "Have you had any of these?",
            "item": [
                {
                    "linkId": "sign-warn-1",
                    "text": "Chest pain",
                    "answer": [{"valueBoolean": False}],
                },
                {"linkId": "sign-warn-2", "text": "Redness", "answer": [{"valueBoolean": True}]},
            ],
        },
    ]
    nothing, no_errors = views.response_from_form(questions, {})
    assert nothing == [] and no_errors == {}  # the unit is needed only with a temperature


@pytest.mark.parametrize(
    ("form", "errors"),
    [
        (
            {"body-temperature": "hot", "body-temperature-unit": "Cel"},
            {"body-temperature": "Enter a number, for example 37.2"},
        ),
        ({"body-temperature": "37.5"}, {"body-temperature-unit": "Please answer this question"}),
        ({"body-temperature-unit": "K"}, {"body-temperature-unit": "Choose one of the answers"}),
        ({"pain-score": "11"}, {"pain-score": "Choose a number from 0 to 10"}),
        ({"pain-score": "4.5"}, {"pain-score": "Enter a whole number"}),
        ({"sign-warn-1": "maybe"}, {"sign-warn-1": "Answer yes or no"}),
    ],
)
def test_mistakes_are_named_per_question(form: dict[str, str], errors: dict[str, str]) -> None:
    questions = views.check_in_form(plan(), QUESTIONNAIRE).questions
    assert views.response_from_form(questions, form)[1] == errors


def test_the_result_is_advice_for_a_red_flag_and_thanks_otherwise() -> None:
    answers = CheckInAnswers(authored="2026-03-03")
    fever = TriggeredSign(
        "warn-1",
        "Fever",
        "Fever. Call your care team.",
        "urgent",
        "call-care-team",
        "temperature 38.6 °C",
    )
    chest = TriggeredSign(
        "warn-2",
        "Chest pain",
        "Chest pain. Get emergency help right away.",
        "stat",
        "emergency",
        "answered yes",
    )
    calm = views.check_in_result_view(CheckInResult(answers, (), "Thanks"), ["555-0100"])
    assert not calm.red_flag and calm.headline == "Thank you for checking in."
    urgent = views.check_in_result_view(CheckInResult(answers, (fever,), "…"), ["555-0100"])
    assert (urgent.urgency, urgent.headline) == ("call-care-team", "Call your care team now.")
    assert urgent.signs == ("Fever. Call your care team.",)
    assert urgent.phones == ("555-0100",)
    emergency = views.check_in_result_view(CheckInResult(answers, (chest, fever), "…"), [])
    assert (emergency.urgency, emergency.headline) == ("emergency", "Call 911 now.")


# -- alerts ------------------------------------------------------------------------------------


def test_an_alert_shows_its_patient_signs_and_answers() -> None:
    communication = {
        "resourceType": "Communication",
        "id": "c1",
        "meta": {"versionId": "1"},
        "status": "in-progress",
        "priority": "urgent",
        "subject": {"reference": "Patient/p"},
        "basedOn": [{"reference": "CarePlan/plan-1"}],
        "sent": "2026-03-03T14:05:00Z",
        "reasonCode": [{"text": "Fever"}],
        "payload": [{"contentString": "Fever (urgent): temperature 38.6 °C."}],
    }
    response = {
        "item": [
            {
                "linkId": "body-temperature",
                "text": "Temperature?",
                "answer": [{"valueDecimal": Decimal("38.6")}],
            },
            {
                "linkId": "g",
                "item": [
                    {"linkId": "sign-1", "text": "Chest pain", "answer": [{"valueBoolean": False}]}
                ],
            },
        ]
    }
    item = views.alert_item(
        communication, {"name": [{"text": "Harriet Example"}]}, response, UTC_ZONE
    )
    assert item.patient == "Harriet Example"
    assert (item.patient_id, item.plan_id, item.priority) == ("p", "plan-1", "urgent")
    assert item.sent == "3 March 2026, 14:05"
    assert item.signs == ("Fever",)
    assert item.answers == (
        views.AnswerLine("Temperature?", "38.6"),
        views.AnswerLine("Chest pain", "No"),
    )
    acknowledged = views.alert_acknowledged(communication, NOW)
    assert acknowledged["status"] == "completed"
    assert acknowledged["received"] == "2026-03-03T09:00:00.000Z"
    flag = views.flag_closed({"status": "active", "period": {"start": "2026-03-03"}}, NOW)
    assert flag == {
        "status": "inactive",
        "period": {"start": "2026-03-03", "end": "2026-03-03T09:00:00.000Z"},
    }
