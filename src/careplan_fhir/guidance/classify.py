"""Sentence-level reading of recovery guidance: instructions, kinds, prohibitions, warning signs.

Everything here works on cleaned sentences and heading texts (see :mod:`.blocks`) and is driven
by small lexicons of cue words and phrases, so leaflets from other hospitals, worded differently,
are still read: an imperative or advisory sentence ("Walk every day.", "You may shower after two
days.", "It is OK to drive when…") is an instruction; its kind (the project's CodeSystem
``instruction-kind``) is the kind whose cues score highest, with the section heading as a prior;
"do not / don't / avoid / never / no … / limit … / stop" make it a prohibition. Headings and
lead-ins ("Call your doctor if you have:") give each list its role: care, warning signs,
supplies, or description. Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from .model import Condition, InstructionKind, Quantity, Urgency

#: What the items under a heading or lead-in are.
Role = Literal["care", "warning", "supplies", "descriptive"]

# --------------------------------------------------------------------------------------------
# Sentences

_ABBREVIATIONS = frozenset(
    {"dr", "mr", "mrs", "ms", "st", "e.g", "i.e", "etc", "vs", "approx", "no", "fig", "min", "hr"}
)
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s+[\"'“‘(\[]?[A-Z0-9•])")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """``[start, end)`` of each sentence of ``text`` (a collapsed, one-line block text)."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        before = text[start : match.start()].split()
        last_word = before[-1].lower().rstrip(".") if before else ""
        if match.group(0).startswith(".") and last_word in _ABBREVIATIONS:
            continue
        end = match.end()
        if text[start:end].strip():
            spans.append((start, end))
        start = end
        while start < len(text) and text[start].isspace():
            start += 1
    if text[start:].strip():
        spans.append((start, len(text.rstrip())))
    return spans


_CLAUSE_BREAK = re.compile(
    r";\s*|,?\s+(?:but|and)\s+(?=(?:do\s+not|don[’']?t|never|avoid)\b)", re.IGNORECASE
)


def split_clauses(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Split a sentence where a do and a do-not meet ("Avoid baths; showers are fine") or where
    a second prohibition is joined on ("…, and avoid hard exercise"); other semicolon clauses
    stay one instruction."""
    pieces: list[tuple[int, int]] = []
    cursor = start
    for match in _CLAUSE_BREAK.finditer(text, start, end):
        cut, after = match.start(), match.end()
        before, rest = text[cursor:cut], text[after:end]
        differ = is_prohibition(before) != is_prohibition(rest)
        if (
            len(before.split()) >= 3
            and len(rest.split()) >= 3
            and (differ or not match.group(0).lstrip().startswith(";"))
        ):
            pieces.append((cursor, cut))
            cursor = after
    pieces.append((cursor, end))
    return pieces


# --------------------------------------------------------------------------------------------
# Roles of headings and lead-ins

_WARNING_CONTEXT = re.compile(
    r"\bcall\s+(?:your|the|us|our|a|911|9-1-1|999|112)\b|\bcall\s+if\b"
    r"|\bwhen\s+(?:should\s+(?:i|you)|to|you\s+should|do\s+i|must\s+i)\s+"
    r"(?:call|contact|get\s+help|seek|go|phone|worry)"
    r"|\bseek\s+(?:medical\s+|emergency\s+|urgent\s+|immediate\s+)?(?:care|help|attention|treatment)"
    r"|\bget\s+(?:medical\s+|emergency\s+|urgent\s+)?help\b"
    r"|\bgo\s+to\s+(?:the\s+|an\s+|your\s+)?(?:nearest\s+)?(?:emergency|er\b|urgent\s+care|a&e)"
    r"|\b(?:warning|danger|alarm)\s+signs?\b|\bred\s+flags?\b"
    r"|\bsigns?\s+of\s+(?:a\s+)?(?:problems?|complications?|trouble)\b"
    r"|\bcontact\s+(?:your|the|us)\b|\bemergenc(?:y|ies)\b"
    r"|\btell\s+your\s+\w+(?:\s+\w+)?\s+(?:right\s+away|immediately|if)\b"
    r"|\bproblems?\s+to\s+(?:watch|look)\s+(?:out\s+)?for\b|\bwhen\s+to\s+worry\b",
    re.IGNORECASE,
)
_SUPPLY_CONTEXT = re.compile(
    r"\bsupplies\b|\bthings?\s+(?:to|you(?:'ll|’ll|\s+will)?\s+(?:need|want))\b"
    r"|\bwhat\s+(?:will\s+|do\s+|should\s+)?(?:i|you)\s+(?:need|have|buy|get)\b"
    r"|\b(?:need|have|keep)\s+(?:at|in\s+the)\s+home\b|\b(?:on|at)\s+hand\b|\bshopping\b"
    r"|\bequipment\b|\bwhat\s+to\s+(?:bring|buy|get|have)\b|\byou\s+will\s+need\s*:"
    r"|\b(?:items|things)\b[^.]*\b(?:ready|at\s+home|on\s+hand|to\s+have|you\s+need)\b"
    r"|\bhave\s+(?:these|the\s+following)\b[^.]*\bready\b",
    re.IGNORECASE,
)
_DESCRIPTIVE_CONTEXT = re.compile(
    r"^(?:what\s+(?:is|are)\s+(?:a\s+|an\s+|the\s+)?(?!recovery\b|the\s+recovery\b)"
    r"|how\s+is\s+(?:it|this|the)\b|why\b|about\s+(?:the|your|this)\b|overview\b|background\b"
    r"|introduction\b|description\b|what\s+happens\s+during\b|how\s+does\b"
    # "How do I / you …?" asks what to do (a care section); "How do bones heal?" describes.
    r"|how\s+do\b(?!\s+(?:i|you|we)\b))"
    r"|\brisks?\b|\bside\s+effects\b|\bcomplications\b",
    re.IGNORECASE,
)


def context_role(text: str) -> Role | None:
    """The role a heading or lead-in gives the items under it, or None if it says nothing."""
    stripped = text.strip()
    if _WARNING_CONTEXT.search(stripped):
        return "warning"
    if _SUPPLY_CONTEXT.search(stripped):
        return "supplies"
    if _DESCRIPTIVE_CONTEXT.search(stripped):
        return "descriptive"
    return None


# --------------------------------------------------------------------------------------------
# Instructions


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


#: Base verbs that open an imperative instruction.
VERBS = _word_set(
    """
    add allow apply ask attend avoid bathe begin bend breathe bring brush buy call carry change
    check chew choose clean climb close contact continue cough count cover do drink drive dry
    eat elevate empty fly cook kneel ride set travel work play squat lean
    exercise fill flex follow get go have hold ice include increase inspect
    keep leave let lie lift limit listen look make massage measure monitor move nap note notify
    pat phone pick place plan point practice practise prepare prevent prop protect pull push put
    raise read record reduce refill relax remember remove replace report rest restrict resume
    return review rinse roll schedule see shower sit sleep slow soak squeeze stand start stay
    stop store straighten stretch support swim switch take talk tell tighten track try turn use
    visit wait walk wash watch wear weigh wipe write
    """
)
#: Verbs after "you may / you can" that describe what happens, not what to do.
_EXPERIENCE_VERBS = _word_set(
    """
    be become bleed bruise develop experience feel find gain get have hear lose need notice see
    want look seem start
    """
)
#: Outcomes one "avoids" by doing something: "avoid constipation" is not a do-not-perform.
_AVOIDED_OUTCOMES = re.compile(
    r"^avoid(?:ing)?\s+(?:getting\s+)?(?:constipation|infections?|dehydration|falls?|falling|"
    r"injur(?:y|ies|ing)|blood\s+clots?|pneumonia|complications?|problems?)\b",
    re.IGNORECASE,
)
_LABEL = re.compile(r"^[A-Z][\w’'\- ]{0,40}:\s+")
_LEAD_CLAUSE = re.compile(
    r"^(?:after|when|once|while|until|before|for|during|in|starting|beginning|unless|at|if|"
    r"as\s+soon\s+as|each|every|on)\b"
    r"(?:(?!\b(?:you|we)\s+(?:can|may|should|must|will|need)\b)[^,]){0,80},\s*",
    re.IGNORECASE,
)
_LEAD_PHRASE = re.compile(
    r"^(?:after\s+(?:that|this)|then|afterwards|later|later\s+on|from\s+then\s+on|at\s+first|"
    r"at\s+home|meanwhile|instead|if\s+needed|if\s+you\s+can)\b\s*,?\s*",
    re.IGNORECASE,
)
_SOFTENERS = re.compile(
    r"^(?:(?:please|always|also|then|now|gently|slowly|carefully|gradually|regularly|"
    r"be\s+sure\s+(?:to|that\s+you)|make\s+sure\s+(?:to|that\s+you|you)|remember\s+to|"
    r"try\s+to|continue\s+to|plan\s+to|it\s+helps\s+to|you\s+can\s+also)\s+)+",
    re.IGNORECASE,
)
_INSTRUCTION_OPENER = re.compile(
    r"^(?:please\s+)?(?:be\s+sure\s+(?:to|that\s+you)|make\s+sure|remember\s+to|try\s+to|"
    r"plan\s+to|continue\s+to|don[’']?t\s+forget\s+to)\b",
    re.IGNORECASE,
)
_PROHIBITION_START = re.compile(
    r"^(?:please\s+|also\s+|and\s+)?(?:do\s+not|don[’']?t|never|avoid(?:ing)?|no|stop(?:ping)?|"
    r"refrain|limit(?:ing)?|restrict(?:ing)?|try\s+not\s+to|be\s+careful\s+not\s+to|"
    r"you\s+(?:should|must|may|can)\s*not|you\s+(?:shouldn[’']?t|mustn[’']?t|can[’']?t|cannot)|"
    r"you\s+(?:are\s+not|aren[’']?t)\s+(?:allowed|able|supposed)\s+to|"
    r"it\s+is\s+not\s+(?:ok|okay|safe|a\s+good\s+idea)\s+to|not\s+(?!only\b)\w+ing\b|"
    r"wait\s+(?:to|before)\s+\w+(?:ing)?\b(?=[^.]*\buntil\b))\b",
    re.IGNORECASE,
)
_PROHIBITION_INSIDE = re.compile(
    r"(?:,|\band|\bbut|\bthen)\s+(?:do\s+not|don[’']?t|never|avoid)\b", re.IGNORECASE
)
_ADVISORY = re.compile(
    r"^(?:you\s+(?:should|must|need\s+to|will\s+need\s+to|have\s+to|ought\s+to|"
    r"[’']ll\s+need\s+to|are\s+(?:advised|encouraged|asked)\s+to)\b"
    r"|it\s+is\s+(?:ok|okay|fine|safe|alright|all\s+right|important|best|a\s+good\s+idea|"
    r"recommended|helpful|normal\s+to\s+\w+\s+and\s+ok)\s+(?:for\s+you\s+)?to\b"
    r"|it[’']s\s+(?:ok|okay|fine|safe|alright|important|best|a\s+good\s+idea)\s+(?:for\s+you\s+)?to\b"
    r"|we\s+(?:recommend|advise|suggest|encourage)\b"
    r"|(?:your\s+)?(?:\w+\s+)?(?:doctor|provider|surgeon|team|nurse)\s+"
    r"(?:recommends|advises|suggests|wants\s+you\s+to)\b)",
    re.IGNORECASE,
)
_PERMISSION = re.compile(
    r"^(?:you|most\s+people|many\s+people|patients)\s+(?:may|can|could|are\s+(?:able|allowed|free)"
    r"\s+to)\s+(?:now\s+|also\s+|then\s+|usually\s+|often\s+)?"
    r"(?:start\s+to\s+|begin\s+to\s+)?(?P<verb>[a-z]+)",
    re.IGNORECASE,
)
_PERMISSION_ANYWHERE = re.compile(
    r"\byou\s+(?:may|can|could|should|are\s+(?:able|allowed|free)\s+to)\s+"
    r"(?:now\s+|also\s+|then\s+|slowly\s+|gradually\s+)?(?P<verb>[a-z]+)(?P<rest>\s+\w+\s+\w+)?",
    re.IGNORECASE,
)
_SUBORDINATE = re.compile(
    r"\b(?:that|which|who|whether|what|how|until|before|tells?|says?|when|if|because|so)\b",
    re.IGNORECASE,
)
_GO_BACK = re.compile(r"^\s+(?:back\s+to|on\s+with)\b", re.IGNORECASE)


def _permission(clause: str) -> bool | None:
    """ "You may/can <action>" (after at most a short phrase): True; "you may feel…": False."""
    match = _PERMISSION.match(clause)
    if match is None:
        found = _PERMISSION_ANYWHERE.search(clause)
        if found is None:
            return None
        prefix = clause[: found.start()]
        if len(prefix.split()) > 6 or _SUBORDINATE.search(prefix):
            return None
        match = found
    verb = match["verb"].lower()
    rest = match.groupdict().get("rest") or ""
    if verb in {"go", "get"} and _GO_BACK.match(clause[match.end("verb") :]):
        return True
    _ = rest
    return verb in VERBS and verb not in _EXPERIENCE_VERBS


_RECOMMENDED = re.compile(
    r"\b(?:is|are)\s+(?:strongly\s+|highly\s+)?(?:recommended|advised|encouraged|allowed|"
    r"permitted)\b",
    re.IGNORECASE,
)
_DESCRIPTIVE_START = re.compile(
    r"^(?:(?:your|the)\s+(?:\w+\s+){0,2}(?:provider|doctor|team|surgeon|nurse|staff)\s+will\b"
    r"|you\s+will\s+(?:be|have|receive|probably|likely|usually|get|feel|notice|see)\b"
    r"|this\s+(?:is|will|article|leaflet|handout|sheet|information)\b|there\s+(?:is|are)\b"
    r"|it\s+(?:may|might|can|will|could)\s+(?:take|be|feel|help)\b)",
    re.IGNORECASE,
)
_WORDS = re.compile(r"[A-Za-z][A-Za-z’'\-]*")
#: Sentences about the leaflet itself ("Read this page with…") are not care instructions.
_META = re.compile(
    r"\b(?:this|these)\s+(?:page|pages|instructions|leaflet|handout|sheet|guide|booklet|"
    r"information|article)\b",
    re.IGNORECASE,
)
#: "Walking helps…": a gerund that is the subject of a statement, not an instruction.
_GERUND_SUBJECT = re.compile(
    r"^\w+ing\b[^,.;:]{0,60}?\b(?:helps?|can|is|are|will|may|might|lowers?|reduces?|makes?|"
    r"improves?|speeds?|prevents?)\b",
    re.IGNORECASE,
)


def main_clause(sentence: str) -> str:
    """The sentence without a leading label ("Diet: …") or lead clause ("After 2 days, …")."""
    clause = sentence.strip()
    label = _LABEL.match(clause)
    if label and len(clause[: label.end()].split()) <= 6:
        clause = clause[label.end() :]
    clause = _LEAD_PHRASE.sub("", clause)
    lead = _LEAD_CLAUSE.match(clause)
    if lead and not re.match(r"^if\s+you\b", clause, re.IGNORECASE):
        clause = clause[lead.end() :]
    return clause


def _first_verb(clause: str) -> str | None:
    stripped = _SOFTENERS.sub("", clause.strip())
    words = _WORDS.findall(stripped)
    return words[0].lower() if words else None


def _gerund_verb(word: str) -> bool:
    if not word.endswith("ing") or len(word) < 5:
        return False
    stem = word[:-3]
    candidates = {stem, stem + "e"}
    if len(stem) >= 2 and stem[-1] == stem[-2]:
        candidates.add(stem[:-1])
    return bool(candidates & VERBS)


def is_prohibition(sentence: str) -> bool:
    """Whether a sentence tells the patient not to do something ("Do not lift…", "No baths…")."""
    clause = _SOFTENERS.sub("", main_clause(sentence))
    if _AVOIDED_OUTCOMES.match(clause):
        return False
    if _PROHIBITION_START.match(clause):
        return not re.match(r"^no\s+(?:one|matter|longer|need)\b", clause, re.IGNORECASE)
    return bool(_PROHIBITION_INSIDE.search(clause))


def is_instruction(sentence: str, *, bullet: bool = False, role: Role = "care") -> bool:
    """Whether a sentence tells the patient to do (or not do) something.

    Imperatives ("Keep the dressing dry."), advisories ("You should…", "It is OK to…", "…is
    recommended"), permissions with an action verb ("You may shower…", not "You may feel sore")
    and prohibitions count; in bullets, a gerund ("Taking pain medicine as directed") counts too.
    Under a descriptive heading only imperatives and prohibitions count.
    """
    clause = main_clause(sentence)
    if not _WORDS.search(clause) or _META.search(clause):
        return False
    if is_prohibition(sentence):
        return True
    if _INSTRUCTION_OPENER.match(clause):
        return True
    verb = _first_verb(clause)
    if verb == "do":
        return bool(re.match(r"^do\s+(?:your|the|this|these|some|a|an)\b", clause, re.I))
    if verb in VERBS and verb not in {"look", "see"}:
        return not re.match(r"^(?:see|look)\b", clause, re.IGNORECASE) or bool(
            re.match(r"^(?:see\s+your|look\s+(?:at|for|out))\b", clause, re.IGNORECASE)
        )
    if verb in {"see", "look"}:
        return bool(re.match(r"^(?:see\s+your|look\s+(?:at|for|out))\b", clause, re.IGNORECASE))
    if bullet and verb is not None and _gerund_verb(verb) and not _GERUND_SUBJECT.match(clause):
        return True
    if role == "descriptive":
        return False
    if _ADVISORY.match(clause):
        return True
    permission = _permission(clause)
    if permission is not None:
        return permission
    if _DESCRIPTIVE_START.match(clause):
        return False
    return bool(_RECOMMENDED.search(clause)) and len(clause.split()) <= 30


_FOLLOW_UP_STATEMENT = re.compile(
    r"\bwill\s+see\s+(?:you|your)\b|\b(?:visit|appointment|follow-up|check-up)\b[^.]*\bwill\s+be\b"
    r"|\byou\s+will\s+(?:see|visit|meet)\s+(?:your|the)\b|\bwill\s+(?:call|contact)\s+you\b[^.]*"
    r"\b(?:appointment|visit)\b",
    re.IGNORECASE,
)


def is_follow_up_statement(sentence: str) -> bool:
    """A statement of a planned follow-up visit ("You will see your surgeon in 2 weeks")."""
    return bool(_FOLLOW_UP_STATEMENT.search(sentence)) and bool(
        re.search(r"\b\d+|\b(?:one|two|three|four|five|six)\s+(?:days?|weeks?)\b", sentence)
    )


def is_descriptive(sentence: str) -> bool:
    """Whether a sentence describes (what the team will do, what happens) rather than instructs."""
    return bool(_DESCRIPTIVE_START.match(main_clause(sentence)))


# --------------------------------------------------------------------------------------------
# Kinds

_Cue = tuple[re.Pattern[str], float]


def _cues(*pairs: tuple[str, float]) -> tuple[_Cue, ...]:
    return tuple((re.compile(pattern, re.IGNORECASE), weight) for pattern, weight in pairs)


#: Cue words and phrases per instruction kind, with weights. Order breaks ties (specific first).
KIND_CUES: dict[InstructionKind, tuple[_Cue, ...]] = {
    "bowel": _cues(
        (r"\bconstipat\w*", 3),
        (r"\bbowel\s+movements?\b|\bbowels?\b", 3),
        (r"\blaxatives?\b|\bstool\s+softeners?\b", 3),
        (r"\bstools?\b", 2),
        (r"\bstrain(?:ing)?\b", 1),
        (r"\bprunes?\b|\bpass(?:ing)?\s+gas\b", 1),
    ),
    "hygiene": _cues(
        (r"\bshowers?(?:ing)?\b|\bbath(?:s|e|ing)?\b|\btub\b|\bhot\s+tubs?\b", 3),
        (r"\bswim(?:ming)?\b|\bpools?\b|\bsoak(?:ing)?\b", 2),
        (r"\bwash\s+your\s+hands\b|\bhand\s+(?:washing|hygiene)\b|\bhygiene\b", 3),
        (r"\bwash(?:ing)?\b|\bsoap\b|\bclean\s+yourself\b", 1),
    ),
    "wound-care": _cues(
        (r"\bincisions?\b|\bwounds?\b|\bdressings?\b|\bbandages?\b", 2),
        (r"\bstitches\b|\bsutures?\b|\bstaples\b|\bsteri-?strips?\b|\bglue\b", 2),
        (r"\b(?:puncture|needle|insertion|surgical|catheter|port)\s+sites?\b", 2),
        (r"\bscabs?\b|\bgauze\b|\bscars?\b|\bdrains?\b", 1),
        (r"\bsite\b", 1),
    ),
    "medication": _cues(
        (r"\bpain\s+(?:medicines?|medications?|pills?|relievers?|killers?)\b", 3),
        (r"\bmedicines?\b|\bmedications?\b|\bpills?\b|\btablets?\b|\bcapsules?\b", 2),
        (r"\bdos(?:e|es|age|ing)\b|\bprescri(?:ption|ptions|bed)\b|\bpharmacy\b|\brefills?\b", 2),
        (r"\bopioids?\b|\bnarcotics?\b|\bacetaminophen\b|\bparacetamol\b|\bibuprofen\b", 2),
        (r"\baspirin\b|\bantibiotics?\b|\bblood\s+thinners?\b|\banticoagulants?\b", 2),
        (r"\bover-the-counter\b|\binjections?\b|\binhalers?\b", 1),
        (r"\bpain\b", 0.5),
    ),
    "follow-up": _cues(
        (r"\bappointments?\b|\bfollow[- ]?up\b", 3),
        (r"\bcall\s+(?:to|and)\s+(?:schedule|make|book|set\s+up)\b|\bschedul\w+\b", 2),
        (r"\bcheck[- ]?ups?\b|\bsee\s+your\s+(?:doctor|surgeon|provider)\b", 2),
        (r"\bvisits?\b|\bclinic\b|\bx-?rays?\b|\bresults\b|\bremoved\b", 1),
    ),
    "monitoring": _cues(
        (r"\b(?:check|take|measure)\s+your\s+temperature\b", 3),
        (r"\bwatch\s+(?:for|out)\b|\bmonitor\w*\b|\bkeep\s+track\b|\bweigh\s+yourself\b", 2),
        (
            r"\b(?:check|look\s+at|inspect|watch)\s+(?:the|your)\s+(?:\w+\s+)?"
            r"(?:incisions?|wounds?|site|skin|feet|legs|port)\b",
            3,
        ),
        (r"\bfor\s+(?:any\s+)?(?:redness|swelling|signs|drainage|changes)\b", 1),
        (r"\blook\s+(?:for|at)\b|\bthermometer\b|\btemperature\b|\brecord\b|\blog\b", 1),
        (r"\bwrite\s+down\b|\bdiary\b|\bblood\s+(?:pressure|sugar)\b|\bsigns\s+of\b", 1),
    ),
    "exercise": _cues(
        (r"\bexercis(?:e|es|ing)\b|\bstretch(?:es|ing)?\b|\bstrengthen(?:ing)?\b", 2),
        (r"\bphysical\s+therapy\b|\bphysiotherapy\b|\brange\s+of\s+motion\b", 2),
        (r"\bdeep\s+breath(?:s|ing)?\b|\bbreathing\b|\bincentive\s+spirometer\b", 2),
        (r"\brepetitions\b|\breps\b|\bconditioning\b|\brelax(?:ation)?\b|\bmuscles?\b", 1),
    ),
    "diet": _cues(
        (r"\beat(?:ing|s)?\b|\bfoods?\b|\bdiet\b|\bmeals?\b|\bnutrition\b", 2),
        (r"\bdrink(?:ing|s)?\b|\bfluids?\b|\bwater\b|\bfib(?:er|re)\b|\bprotein\b", 1),
        (r"\bfruits?\b|\bvegetables?\b|\balcohol\b|\bcaffeine\b|\bappetite\b|\bsnacks?\b", 1),
    ),
    "activity": _cues(
        (r"\bwalk(?:s|ing)?\b|\blift(?:ing)?\b|\bdriv(?:e|ing)\b|\bbend(?:ing)?\b", 2),
        (r"\bstairs\b|\bsteps\b|\bactivit(?:y|ies)\b|\breturn(?:ing)?\s+to\s+work\b", 2),
        (r"\b(?:go|going|get|getting)\s+back\s+to\s+(?:work|school|normal)\b", 2),
        (r"\btwist(?:ing)?\b|\bsex(?:ual)?\b|\bsports?\b|\brunning\b|\bjogging\b", 2),
        (r"\bchores\b|\bhousework\b|\byard\s*work\b|\bvacuum(?:ing)?\b|\bgardening\b", 2),
        (r"\brest(?:ing)?\b|\bsit(?:ting)?\b|\bstand(?:ing)?\b|\bclimb(?:ing)?\b", 1),
        (r"\bcarry(?:ing)?\b|\bpush(?:ing)?\b|\bpull(?:ing)?\b|\bheavy\b|\bpounds\b|\blbs?\b", 1),
        (r"\bsleep(?:ing)?\b|\blie\s+(?:down|flat|still)\b|\btravel\w*\b|\bwork\b", 1),
    ),
    "supplies": _cues(
        (r"\bsupplies\b", 3),
        (r"\bbuy\b|\bpurchase\b|\bpick\s+up\b|\bequipment\b|\bon\s+hand\b", 2),
        (r"\bwalker\b|\bcane\b|\bcrutches\b|\bgrabber\b|\bshower\s+chair\b", 2),
    ),
    "education": _cues(
        (r"\btalk\s+(?:to|with)\s+your\s+(?:\w+\s+)?(?:team|doctor|provider|nurse)\b", 2),
        (r"\bread\b|\blearn\b|\bquestions\b|\binformation\b|\bunderstand\b|\bvideos?\b", 1),
        (r"\bask\s+your\b|\bclass(?:es)?\b|\bhandouts?\b", 1),
    ),
    "restriction": _cues(
        (r"\brestrict\w*\b|\blimit(?:s|ed|ing)?\b", 2),
        (r"\b(?:no|not)\s+more\s+than\b|\bless\s+than\b|\bheavier\s+than\b", 1),
    ),
}

#: Heading words that name a kind without being an instruction cue ("Pain control").
_HEADING_CUES: dict[InstructionKind, re.Pattern[str]] = {
    "medication": re.compile(r"\bpain\b|\bmedicines?\b|\bmedications?\b", re.IGNORECASE),
    "wound-care": re.compile(r"\bwound\b|\bincision\b|\bdressing\b|\bsite\s+care\b", re.I),
    "activity": re.compile(r"\bactivity\b|\bactivities\b|\bmoving\b|\bgetting\s+around\b", re.I),
    "diet": re.compile(r"\bdiet\b|\beating\b|\bfood\b|\bnutrition\b|\bdrinking\b", re.I),
    "hygiene": re.compile(r"\bbathing\b|\bshowering\b|\bhygiene\b|\bwashing\b", re.I),
    "bowel": re.compile(r"\bbowels?\b|\bconstipation\b", re.I),
    "follow-up": re.compile(r"\bfollow[- ]?up\b|\bappointments?\b|\bnext\s+visit\b", re.I),
    "exercise": re.compile(r"\bexercises?\b|\bphysical\s+therapy\b|\bbreathing\b", re.I),
    "monitoring": re.compile(r"\bmonitoring\b|\bchecking\b|\bwhat\s+to\s+watch\b", re.I),
}
_HEADING_PRIOR = 2.5
_TEMPORAL_CLAUSE = re.compile(
    r"\b(?:while|when|whenever|if|until|unless|as\s+long\s+as)\b(?=\s+\w)", re.IGNORECASE
)
_CONTEXT_WEIGHT = 0.25
_CONTEXT_CAP = 1.0


def kind_scores(text: str) -> dict[InstructionKind, float]:
    """Cue score of each kind in ``text``."""
    scores: dict[InstructionKind, float] = {}
    for kind, cues in KIND_CUES.items():
        hits = sorted(
            (
                (weight, match.start(), match.end())
                for pattern, weight in cues
                for match in pattern.finditer(text)
            ),
            key=lambda hit: -hit[0],
        )
        # Overlapping cues of one kind count once ("pain medicine" is not also "medicine").
        taken: list[tuple[float, int, int]] = []
        for hit in hits:
            if all(hit[2] <= other[1] or other[2] <= hit[1] for other in taken):
                taken.append(hit)
        total = sum(hit[0] for hit in taken)
        if total:
            scores[kind] = total
    return scores


def heading_kind(heading: str | None) -> InstructionKind | None:
    """The kind a section heading names ("Diet", "Caring for your incision"), if any."""
    if not heading:
        return None
    for kind, pattern in _HEADING_CUES.items():
        if pattern.search(heading):
            return kind
    scores = kind_scores(heading)
    if not scores:
        return None
    return max(scores, key=lambda kind: scores[kind])


def classify_kind(
    sentence: str,
    *,
    section: str | None = None,
    context: str = "",
    prohibition: bool = False,
) -> InstructionKind:
    """The instruction kind of a sentence: its own cues, the section heading as a prior, and
    (weakly) the other sentences of its block or lead-in as ``context``."""
    order = list(KIND_CUES)
    clause = main_clause(sentence)
    # Cues in a "while/when/if/until …" clause say when, not what: they count half.
    split = _TEMPORAL_CLAUSE.search(clause)
    head, tail = (clause[: split.start()], clause[split.start() :]) if split else (clause, "")
    scores: dict[InstructionKind, float] = dict(kind_scores(head))
    for kind, score in kind_scores(tail).items():
        scores[kind] = scores.get(kind, 0.0) + 0.5 * score
    prior = heading_kind(section)
    if prior is not None:
        scores[prior] = scores.get(prior, 0.0) + _HEADING_PRIOR
    for kind, score in kind_scores(context).items():
        scores[kind] = scores.get(kind, 0.0) + min(_CONTEXT_CAP, _CONTEXT_WEIGHT * score)
    if not scores:
        return "restriction" if prohibition else "other"
    return max(scores, key=lambda kind: (scores[kind], -order.index(kind)))


# --------------------------------------------------------------------------------------------
# Warning signs

_STAT = re.compile(
    r"\b911\b|\b9-1-1\b|\b999\b|\b112\b|\bemergency\b|\bER\b|\bA&E\b|\bambulance\b",
    re.IGNORECASE,
)
_URGENT = re.compile(
    r"\bright\s+away\b|\bimmediately\b|\bat\s+once\b|\bnow\b|\burgent\w*\b|\bsame\s+day\b",
    re.IGNORECASE,
)
_ROUTINE = re.compile(
    r"\bquestions?\b|\bconcerns?\b|\bnon-?urgent\b|\b(?:office|business)\s+hours\b"
    r"|\bnext\s+(?:visit|appointment)\b",
    re.IGNORECASE,
)
_CALL_IF = re.compile(
    r"^(?:please\s+|also\s+|and\s+)*(?:call|contact|phone|ring|page|get\s+help|seek\s+\w+\s+\w+"
    r"|tell(?=\s+(?:your|the|a)\s+(?:\w+\s+)?(?:team|doctor|surgeon|nurse|provider)\s+if\b)"
    r"|go\s+to)\b(?P<who>[^.]*?)\b(?:right\s+away\s+|immediately\s+|now\s+)?"
    r"(?:if|when|with\s+any|about\s+any|for\s+any)\s+(?P<sign>.+)$",
    re.IGNORECASE,
)
_IF_THEN_CALL = re.compile(
    r"^if\s+(?P<sign>[^,]+),\s*(?:please\s+)?(?:call|contact|phone|go\s+to|seek|get|tell)\b",
    re.IGNORECASE,
)


def urgency_of(text: str, context: str = "") -> Urgency:
    """911 / emergency room → ``stat``; questions and concerns → ``routine``; else ``urgent``."""
    if _STAT.search(text):
        return "stat"
    if _ROUTINE.search(text):
        return "routine"
    if _STAT.search(context):
        return "stat"
    return "urgent"


_SIGN_BREAK = re.compile(r",?\s*(?:or|and)?\s*\bif\s+|,\s*(?:or|and)\s+(?=you\s)", re.I)
_SIGN_LEAD = re.compile(
    r"^(?:you\s+(?:have|notice|develop|get|feel|see|experience)\s+(?:any\s+of\s+these\s*)?)",
    re.IGNORECASE,
)


def warning_in_sentence(sentence: str) -> str | None:
    """The sign in a "call … if <sign>" / "if <sign>, call …" sentence, or None."""
    signs = warnings_in_sentence(sentence)
    return "; ".join(text for text, _, _ in signs) if signs else None


def warnings_in_sentence(sentence: str) -> list[tuple[str, int, int]]:
    """Each sign in a "call … if <a>, if <b> or if <c>" sentence, with its span in the sentence.

    "if <sign>, call …" gives one sign; a "call … for an appointment" sentence gives none.
    """
    clause = sentence.rstrip()
    match = _CALL_IF.match(clause) or _IF_THEN_CALL.match(clause)
    if match is None:
        return []
    if match.re is _CALL_IF and re.search(
        r"\b(?:schedule|appointment|date|confirm)\b", match["who"], re.I
    ):
        return []
    start, end = match.start("sign"), match.end("sign")
    pieces: list[tuple[int, int]] = []
    cursor = start
    if match.re is _CALL_IF:
        for brk in _SIGN_BREAK.finditer(clause, start, end):
            pieces.append((cursor, brk.start()))
            cursor = brk.end()
    pieces.append((cursor, end))
    signs: list[tuple[str, int, int]] = []
    for piece_start, piece_end in pieces:
        text = clause[piece_start:piece_end].strip().rstrip(".!:;,").strip()
        lead = _SIGN_LEAD.match(text)
        if lead and len(text) > lead.end():
            text = text[lead.end() :]
        if len(text.split()) < 1 or text.lower() in {"you", "you have", "any"}:
            continue
        signs.append((text[0].upper() + text[1:], piece_start, piece_end))
    return signs


def calls_for_help(sentence: str) -> bool:
    """Whether a sentence is a lead-in to warning signs ("Call your doctor if you have:")."""
    return bool(_WARNING_CONTEXT.search(sentence))


# --------------------------------------------------------------------------------------------
# Conditions and clinician parameters

_TEMPERATURE = re.compile(
    r"\b(?:fever|temperature|temp)\b[^.;]*?"
    r"(?P<cmp>above|over|higher\s+than|greater\s+than|more\s+than|exceeding|of\s+at\s+least|"
    r"at\s+least|>=|≥|>|of|reaches|is)\s*"
    r"(?P<value>\d{2,3}(?:[.,]\d{1,2})?)\s*(?:°|º|degrees?|deg\.?)?\s*"
    r"(?P<unit>(?:F|C)(?:ahrenheit|elsius)?\b)?"
    r"(?P<more>\s*(?:or|and)\s+(?:higher|above|more|greater|over)\b)?",
    re.IGNORECASE,
)
_TEMPERATURE_FIRST = re.compile(
    r"(?P<value>\d{2,3}(?:[.,]\d{1,2})?)\s*(?:°|º|degrees?)\s*(?P<unit>(?:F|C)(?:ahrenheit|elsius)?\b)?"
    r"(?P<more>\s*(?:or|and)\s+(?:higher|above|more|greater|over)\b)?",
    re.IGNORECASE,
)
_PAIN_SCORE = re.compile(
    r"\bpain\b[^.;]*?(?P<cmp>above|over|higher\s+than|greater\s+than|more\s+than|of\s+at\s+least|"
    r"at\s+least|>=|≥|>|of|is)\s*(?P<value>\d{1,2})\s*(?:/\s*10|out\s+of\s+10|on\s+a\s+\w*\s*"
    r"(?:0|zero)?\s*(?:to|-)?\s*(?:10|ten)?\s*(?:point\s+)?scale)"
    r"(?P<more>\s*(?:or|and)\s+(?:higher|above|more|greater|worse)\b)?",
    re.IGNORECASE,
)
_FEVER = re.compile(r"\bfevers?\b|\btemperature\b|\bfeverish\b", re.IGNORECASE)
_FEVER_DEFERRAL = re.compile(
    r"\bwhat\s+temperature\b|\btemperature\s+(?:that\s+)?(?:your|the)\s+(?:\w+\s+){0,2}"
    r"(?:provider|doctor|surgeon|nurse|team)\s+(?:gave|told|gives|tells|set|recommend)"
    r"|\btemperature\b[^.]*\b(?:ask|check\s+with)\s+your\b"
    r"|\bask\s+your\s+(?:\w+\s+){0,2}(?:provider|doctor|surgeon|nurse|team)\b[^.]*\btemperature\b",
    re.IGNORECASE,
)

#: The clinician parameter a fever warning sign uses when the leaflet defers its threshold.
FEVER_PARAMETER = "fever_threshold"


@dataclass(frozen=True)
class _Comparison:
    comparator: Literal[">", ">="]
    value: Decimal


def _comparison(cmp: str, value: str, more: str | None) -> _Comparison:
    inclusive = bool(more) or cmp.lower().replace("  ", " ") in {
        "of",
        "at least",
        "of at least",
        ">=",
        "≥",
        "reaches",
        "is",
    }
    return _Comparison(">=" if inclusive else ">", Decimal(value.replace(",", ".")))


def _temperature_unit(unit: str | None, value: Decimal) -> str:
    if unit:
        return "[degF]" if unit[0].upper() == "F" else "Cel"
    # No unit written: body temperatures in °C are below 45, in °F above 90.
    return "[degF]" if value > 50 else "Cel"


def defers_fever_threshold(text: str) -> bool:
    """Whether the text leaves the fever threshold to the clinician ("at what temperature…")."""
    return bool(_FEVER_DEFERRAL.search(text))


def mentions_fever(text: str) -> bool:
    """Whether the text is about fever or body temperature."""
    return bool(_FEVER.search(text))


def condition_of(text: str, *, fever_parameter: str | None = None) -> Condition | None:
    """The measurable condition of a warning sign: a temperature or a pain score above a value.

    A temperature with no number uses ``fever_parameter`` (the clinician's threshold) when given;
    otherwise there is no condition: a number is never invented.
    """
    temperature = _TEMPERATURE.search(text)
    if temperature is not None:
        found = _comparison(temperature["cmp"], temperature["value"], temperature["more"])
        unit = _temperature_unit(temperature["unit"], found.value)
        if 30 <= found.value <= 115:
            return Condition(
                "body-temperature", found.comparator, Quantity(value=found.value, unit=unit)
            )
    if _FEVER.search(text):
        first = _TEMPERATURE_FIRST.search(text)
        if first is not None:
            value = Decimal(first["value"].replace(",", "."))
            comparator: Literal[">", ">="] = ">="
            unit = _temperature_unit(first["unit"], value)
            if 30 <= value <= 115:
                return Condition("body-temperature", comparator, Quantity(value=value, unit=unit))
        if fever_parameter is not None:
            return Condition("body-temperature", ">=", parameter=fever_parameter)
    pain = _PAIN_SCORE.search(text)
    if pain is not None:
        found = _comparison(pain["cmp"], pain["value"], pain["more"])
        if 0 <= found.value <= 10:
            return Condition(
                "pain-score", found.comparator, Quantity(value=found.value, unit="{score}")
            )
    return None


# --------------------------------------------------------------------------------------------
# Supplies and "as directed"

_AS_DIRECTED = re.compile(
    r"\b(?:or\s+)?as\s+(?:directed|advised|instructed|told|prescribed)\b"
    r"|\bunless\s+(?:you\s+are\s+)?(?:told|directed|advised)\s+otherwise\b"
    r"|\bor\s+when\s+your\s+(?:\w+\s+)?(?:team|doctor|provider|surgeon|nurse)\s+(?:says|tells)\b",
    re.IGNORECASE,
)
_CLINICIAN_LIFT = re.compile(
    r"\b(?:team|doctor|provider|surgeon|nurse|clinician|physician)\b|\b(?:told|advised|cleared|"
    r"allowed|says|okays|ok)\b",
    re.IGNORECASE,
)


def as_directed(text: str) -> bool:
    """Whether the text lets the clinician override it ("or as directed", "unless told so")."""
    return bool(_AS_DIRECTED.search(text))


def lifted_by_clinician(until: str) -> bool:
    """Whether what lifts a prohibition is the clinician's word ("until your team says so")."""
    return bool(_CLINICIAN_LIFT.search(until))


_SUPPLY_SENTENCE = re.compile(
    r"\b(?:make\s+sure\s+(?:that\s+)?you\s+have|have\s+(?:these\s+)?ready|"
    r"you(?:['’]ll|\s+will)\s+need|keep\s+(?:these\s+)?(?:on\s+hand|nearby|at\s+home)|"
    r"have\s+on\s+hand|stock\s+up\s+on)\s+(?:some\s+|these\s+|the\s+following\s*:?\s*)?"
    r"(?P<list>(?!to\b)[^.:;]+)",
    re.IGNORECASE,
)


def supply_list_in_sentence(sentence: str) -> tuple[int, int] | None:
    """The span of an inline supply list ("make sure you have gauze, tape and a thermometer")."""
    match = _SUPPLY_SENTENCE.search(sentence)
    if match is None:
        return None
    listed = match["list"]
    if "," not in listed and " and " not in listed:
        return None
    return match.start("list"), match.end("list")


def supply_items(text: str) -> list[tuple[int, int]]:
    """Items of an inline supply list ("gauze, tape and a thermometer") as spans of ``text``."""
    items: list[tuple[int, int]] = []
    start = 0
    for match in re.finditer(r"\s*(?:,\s*(?:and\s+|or\s+)?|;\s*|\s+and\s+|\s+or\s+)", text):
        if text[start : match.start()].strip():
            items.append((start, match.start()))
        start = match.end()
    end = len(text.rstrip().rstrip("."))
    if text[start:end].strip():
        items.append((start, end))
    return items


_TOPICS: tuple[tuple[str, str], ...] = (
    (r"\btub\b|\bbath", "bathing"),
    (r"\bshower", "showering"),
    (r"\bswim", "swimming"),
    (r"\bdriv", "driving"),
    (r"\blift", "lifting"),
    (r"\bwork\b", "work"),
    (r"\bsex", "sexual_activity"),
    (r"\bexercis", "exercise"),
    (r"\bactivit", "activity"),
    (r"\bwalk", "walking"),
)


def topic_of(text: str, kind: str) -> str:
    """A short snake_case topic for parameter names ("bathing", "driving"; else the kind)."""
    for pattern, topic in _TOPICS:
        if re.search(pattern, text, re.IGNORECASE):
            return topic
    return kind.replace("-", "_")


__all__ = [
    "FEVER_PARAMETER",
    "KIND_CUES",
    "VERBS",
    "Role",
    "as_directed",
    "calls_for_help",
    "classify_kind",
    "condition_of",
    "context_role",
    "defers_fever_threshold",
    "heading_kind",
    "is_descriptive",
    "is_follow_up_statement",
    "supply_list_in_sentence",
    "warnings_in_sentence",
    "is_instruction",
    "is_prohibition",
    "kind_scores",
    "lifted_by_clinician",
    "main_clause",
    "mentions_fever",
    "split_clauses",
    "split_sentences",
    "supply_items",
    "topic_of",
    "urgency_of",
    "warning_in_sentence",
]
