"""The GDPR Art. 33 notification draft, as blocks (infra/report/render.py renders them).

Art. 33(3) asks for: (a) the nature of the breach, with the categories and
approximate numbers of data subjects and of records; (b) a contact point;
(c) the likely consequences; (d) the measures taken or proposed. Art. 33(1)
counts 72 hours from awareness. The draft says what the log establishes and
leaves marked placeholders for what only the controller can say.
"""

from datetime import timedelta

from infra.report.render import Block, Bullets, Figure, Heading, Para, Table
from services.scoping import Scope

TITLE = "Personal data breach: notification draft (GDPR Art. 33)"
TODO = "[to be completed by the data-protection officer]"
MAX_ROWS = 50  # per table: the complete lists are in scope.json and the CSVs


def _when(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if hasattr(value, "strftime") else "-"


def _selector(scope: Scope) -> list[str]:
    s = scope.selector
    said = [
        f"{name.replace('_', ' ')}: {', '.join(values)}"
        for name in s.__struct_fields__
        if (values := getattr(s, name)) and isinstance(values, tuple)
    ]
    said.append(f"from: {_when(s.since) if s.since else 'the start of the ledger'}")
    said.append(f"to: {_when(s.until) if s.until else 'when this scope was made'}")
    return said


def _awareness(scope: Scope) -> list[Block]:
    if scope.awareness is None:
        return [
            Para(
                "Awareness time: not given. The 72 hours of Art. 33(1) run from the moment the "
                "controller became aware of the breach: run `carnet scope` again with "
                "`--awareness TIME` (or `--awareness now`)."
            )
        ]
    deadline = scope.awareness + timedelta(hours=72)
    return [
        Para(f"Aware of the breach since: {_when(scope.awareness)}."),
        Para(
            f"Notify the supervisory authority by {_when(deadline)} (72 hours, Art. 33(1)); a "
            "later notification must give the reasons for the delay."
        ),
    ]


def _nature(scope: Scope) -> list[Block]:
    n, a = scope.summary, scope.anomaly
    actors = [
        f"{x.actor_kind} {x.actor_id} (tokens {', '.join(x.token_ids) or '-'}; addresses "
        f"{', '.join(x.client_ips)}; user agents {', '.join(x.user_agents)}): {x.accesses} "
        f"disclosing entries, {x.refused} refused, {_when(x.first_at)} to {_when(x.last_at)}"
        for x in scope.actors[:MAX_ROWS]
    ]
    said: list[Block] = [
        Para("Who accessed the data, as the access ledger recorded it:"),
        Bullets(actors),
        Para(
            f"Disclosed: {n.records} records ({n.appointments} appointments) concerning "
            f"{n.patients_identified + n.patients_concerned_only} patients: "
            f"{n.patients_identified} identified, {n.patients_concerned_only} concerned without "
            f"being identified (pseudonymous data); {n.practitioners} practitioners; "
            f"{n.establishments} establishments (the data controllers). {n.modified} records "
            "were created or changed."
        ),
        Para(
            f"Tried without success: {n.not_found} look-ups answered not found and {n.denied} "
            "refused; those disclosed nothing."
        ),
    ]
    if a.start is not None:
        reasons = "; ".join(d.detail for d in a.start.reasons)
        said.append(
            Para(
                f"Anomaly start: entry {a.start.sequence} at {_when(a.start.at)}, from "
                f"{a.start.client_ip} with user agent {a.start.user_agent!r}: {reasons}."
            )
        )
    else:
        said.append(Para(f"Anomaly start: none found ({a.note})."))
    return said


def _categories(scope: Scope) -> list[Block]:
    c = scope.categories
    rows = [(k.label, ", ".join(k.fields), str(k.records), str(k.patients)) for k in c.disclosed]
    return [
        Table(("category of personal data", "fields", "records", "data subjects"), rows),
        Para("Not disclosed: " + ("; ".join(c.statements) or "every category was disclosed")),
    ]


def _consequences(scope: Scope) -> list[str]:
    names = {k.name for k in scope.categories.disclosed}
    said = []
    if not scope.records:
        said.append(
            "Nothing was disclosed: every attempt was refused. A notification may not be "
            "required (Art. 33(1), no risk likely); record the decision (Art. 33(5))."
        )
    if {"identity", "appointment"} <= names:
        said.append(
            "Patients can be linked to an appointment with a named practitioner and specialty: "
            "this may reveal health information (a special category, Art. 9), and be used for "
            "discrimination, blackmail or embarrassment."
        )
    elif names and "identity" not in names:
        said.append(
            "Records were disclosed without the patients' identity (pseudonymous data): "
            "re-identification needs other data; the risk is lower, not nil."
        )
    if "contact" in names:
        said.append(
            "Email addresses and phone numbers allow targeted phishing and fraud in the name "
            "of the practice (fake appointment reminders, payment requests)."
        )
    if scope.categories.modified:
        said.append(
            "Appointments or patient records were created or changed: patients may miss care "
            "or be misinformed; check every modified record (scope.json, categories.modified)."
        )
    return said


def _evidence(scope: Scope) -> list[Block]:
    chain, window = scope.chain, scope.window
    said: list[Block] = []
    if chain.state == "tampered":
        said.append(
            Para(
                f"WARNING: the access ledger has been tampered with: {chain.detail}. "
                + (
                    "The finding is within the entries this scope read: it may be incomplete "
                    "or wrong."
                    if chain.affects_scope
                    else "The finding comes after the entries this scope read."
                ),
                strong=True,
            )
        )
    elif chain.state == "unchecked":
        said.append(Para(f"The hash chain was not checked: {chain.detail}.", strong=True))
    else:
        said.append(Para("The access ledger's hash chain was verified: intact."))
    if window.reaches_before_log:
        start = _when(window.log_start) if window.log_start else "(the ledger is empty)"
        said.append(
            Para(
                f"The window reaches before the ledger's first entry ({start}): accesses "
                "before it were not recorded here and cannot be scoped.",
                strong=True,
            )
        )
    said.append(
        Para(
            f"Entries read: {scope.summary.entries} (sequences {window.first_sequence or '-'} to "
            f"{window.last_sequence or '-'}); values rebuilt by replaying the log to each "
            f"entry's position. Generated {_when(scope.generated_at)} by `carnet scope`."
        )
    )
    return said


def blocks(scope: Scope, svg: str) -> list[Block]:
    places = [
        (
            e.establishment_id or "(none: the platform)",
            str(len(e.patients_identified)),
            str(len(e.patients_concerned_only)),
            str(len(e.records)),
        )
        for e in scope.establishments[:MAX_ROWS]
    ]
    return [
        Heading(1, TITLE),
        Para("DRAFT: check every statement before sending it.", strong=True),
        Heading(2, "Scope"),
        Bullets(_selector(scope)),
        Heading(2, "1. Awareness and deadline"),
        *_awareness(scope),
        Heading(2, "2. Nature of the breach (Art. 33(3)(a))"),
        *_nature(scope),
        Heading(3, "Categories of personal data"),
        *_categories(scope),
        Heading(3, "Data controllers concerned"),
        Table(("establishment", "identified patients", "concerned only", "records"), places),
        Para("Patients to inform, per establishment: notify-<establishment>.csv."),
        Heading(2, "3. Contact point (Art. 33(3)(b))"),
        Bullets([f"Data-protection officer: {TODO}", f"Email and phone: {TODO}"]),
        Heading(2, "4. Likely consequences (Art. 33(3)(c))"),
        Bullets([*_consequences(scope), TODO]),
        Heading(2, "5. Measures taken or proposed (Art. 33(3)(d))"),
        Bullets(
            [
                "Revoke the tokens used (POST /tokens/{token_id}/revoke) and rotate the "
                "integration's credentials: " + TODO,
                "Send each establishment its list of patients (notify-*.csv): " + TODO,
                "Decide on informing the data subjects (Art. 34) where the risk is high: " + TODO,
                "Watch the ledger for further accesses from the addresses above: " + TODO,
            ]
        ),
        Heading(2, "6. Timeline"),
        Figure(svg, "timeline.svg", "Accesses in scope against the actor's baseline"),
        Heading(2, "7. Evidence"),
        *_evidence(scope),
    ]
