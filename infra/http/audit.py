"""The access ledger at the HTTP edge: every audited route records who touched
which records, and the response leaves only once that record is durable.

A route is audited by an `Audit` in the route table. Its handler says what it
disclosed or changed with `note(...)`; the wrapper writes the entry through
the group-committed ledger and only then returns the response. An audited
handler that notes nothing is a bug and answers 500 rather than disclose
unrecorded. Refusals (not found, denied) are recorded too, naming the ids the
caller asked for.

The header values an entry keeps (`User-Agent`, `X-Purpose-Of-Use`, and the
request id) are stored escaped and bounded: see `infra.http.headers`.
"""

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from domain.agenda import AgendaDay
from domain.directory import Patient
from domain.errors import Forbidden, NotFound
from domain.ledger import AS_OF_ITSELF, IDENTITY_FIELDS, AccessRecord, Disclosure
from infra.http.headers import USER_AGENT_LIMIT, escaped, header
from infra.http.keys import ACTOR, REQUEST_ID, SERVICES
from infra.http.wire import HTTPProblem
from infra.keyring import KEYS, SubjectErased
from infra.witness import WITNESS, Witness
from services.actors import Actor, ActorKind
from services.ports import Unavailable

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# What a write's answer will disclose of the aggregates it saves (Audit.describe).
Describe = Callable[[web.Request, Sequence[Any]], Awaitable["Access"]]
PURPOSE_HEADER = "X-Purpose-Of-Use"
WRITES = frozenset({"create", "change", "delete"})


@dataclass(frozen=True)
class Audit:
    resource: str  # what kind of record: appointment, patient, agenda, …
    action: str  # read | search | export | create | change | delete
    ids: tuple[str, ...] = ()  # path parameters naming the records asked for
    # A write's: what its answer will disclose of the aggregates it saves, for
    # the entry appended with them (None: the records changed, no fields).
    describe: "Describe | None" = None


@dataclass
class Access:
    """What one request disclosed or changed, noted by its handler."""

    items: list[Disclosure] = field(default_factory=list)
    record_ids: list[str] = field(default_factory=list)  # touched or asked for, beyond items
    patient_ids: list[str] = field(default_factory=list)  # concerned, beyond items
    fields: list[str] = field(default_factory=list)
    as_of: int = 0
    as_of_tx: int = 0
    replay: bool = False
    noted: bool = False


ACCESS = web.RequestKey("access", Access)
# What a request's selectors may hold in its entry: enough to say what was
# asked for, bounded whatever the client sends.
MAX_SELECTORS, SELECTOR_LIMIT = 16, 200
_NOT_SELECTORS = frozenset({"min_position"})


def _id(value: object) -> str | None:
    return None if value is None else str(value)


def disclosed(
    record_id: object,
    *,
    patient_id: object = None,
    practitioner_id: object = None,
    establishment_id: object = None,
    fields: Sequence[str] = (),
    identified: bool | None = None,
) -> Disclosure:
    """One record as it left in an answer; the patient is identified if an identity field did."""
    if identified is None:
        identified = not IDENTITY_FIELDS.isdisjoint(fields)
    return Disclosure(
        record_id=str(record_id),
        patient_id=_id(patient_id),
        identified=patient_id is not None and identified,
        practitioner_id=_id(practitioner_id),
        establishment_id=_id(establishment_id),
        fields=tuple(fields),
    )


def note(
    request: web.Request,
    *,
    items: Sequence[Disclosure] = (),
    record_ids: Sequence[object] = (),
    patient_ids: Sequence[object] = (),
    fields: Sequence[str] = (),
    as_of: int = 0,
    as_of_tx: int = 0,
    replay: bool = False,
) -> None:
    """Say what this request disclosed or changed (`items`), or whose data it was about."""
    add(
        request[ACCESS],
        items=items,
        record_ids=record_ids,
        patient_ids=patient_ids,
        fields=fields,
        as_of=as_of,
        as_of_tx=as_of_tx,
        replay=replay,
    )


def add(
    access: Access,
    *,
    items: Sequence[Disclosure] = (),
    record_ids: Sequence[object] = (),
    patient_ids: Sequence[object] = (),
    fields: Sequence[str] = (),
    as_of: int = 0,
    as_of_tx: int = 0,
    replay: bool = False,
) -> Access:
    """`access` with more noted in it (what `note` does to the request's)."""
    access.items += items
    access.record_ids += [str(i) for i in record_ids]
    access.patient_ids += [str(i) for i in patient_ids if i is not None]
    for f in [*fields, *(f for i in items for f in i.fields)]:
        if f not in access.fields:
            access.fields.append(f)
    if (as_of, as_of_tx) > (access.as_of, access.as_of_tx):
        access.as_of, access.as_of_tx = as_of, as_of_tx
    access.replay = access.replay or replay
    access.noted = True
    return access


def selectors(request: web.Request) -> tuple[tuple[str, str], ...]:
    """The path ids and query parameters the caller sent, escaped and bounded, sorted."""
    pairs = {(k, escaped(v, SELECTOR_LIMIT)) for k, v in request.match_info.items()}
    pairs |= {
        (escaped(k, SELECTOR_LIMIT), escaped(v, SELECTOR_LIMIT))
        for k, v in request.query.items()
        if k not in _NOT_SELECTORS
    }
    return tuple(sorted(pairs))[:MAX_SELECTORS]


async def load_actor_key(request: web.Request, actor: Actor) -> None:
    """Make the actor's data key ready: their address and user agent are stored
    sealed under it, so the ledger's chain never hashes them in clear and an
    erased person's entries still verify (infra/keyring.py)."""
    ring = request.app[SERVICES].ledger.store.keyring
    if ring is not None and not KEYS.live(actor.id):
        with contextlib.suppress(SubjectErased):  # erased: nothing of theirs is kept
            await ring.ensure([actor.id])


def _sealed(request: web.Request, actor: Actor, field: str, text: str) -> str:
    if request.app[SERVICES].ledger.store.keyring is None:
        return text  # a pool without a keyring (the service layer's own tests)
    if not KEYS.live(actor.id):
        return ""  # erased (or never loaded): kept as nothing rather than in clear
    return KEYS.seal_text(actor.id, field, text)


def access_record(
    request: web.Request, actor: Actor, audit: Audit, outcome: str, access: Access
) -> AccessRecord:
    items = tuple({(i.record_id, i.patient_id): i for i in access.items}.values())
    return AccessRecord(
        actor_kind=actor.kind.value,
        actor_id=str(actor.id),
        token_id=str(actor.token_id) if actor.token_id else None,
        integration_id=str(actor.id) if actor.kind is ActorKind.INTEGRATION else None,
        action=audit.action,  # type: ignore[arg-type]
        resource_type=audit.resource,
        record_ids=tuple(dict.fromkeys([*(i.record_id for i in items), *access.record_ids])),
        patient_ids=tuple(
            dict.fromkeys([*(i.patient_id for i in items if i.patient_id), *access.patient_ids])
        ),
        fields=tuple(access.fields),
        items=items,
        selectors=selectors(request),
        replay=access.replay,
        purpose=header(request, PURPOSE_HEADER, "treatment"),
        outcome=outcome,  # type: ignore[arg-type]
        at=request.app[SERVICES].clock.now(),
        request_id=request.get(REQUEST_ID, ""),
        client_ip=_sealed(request, actor, "client_ip", request.remote or ""),
        user_agent=_sealed(
            request, actor, "user_agent", header(request, "User-Agent", limit=USER_AGENT_LIMIT)
        ),
        as_of=access.as_of,
        as_of_tx=access.as_of_tx,
    )


def _asked_for(request: web.Request, audit: Audit) -> Access:
    """The ids the caller named: in the path, and any the handler noted from the body.

    Nothing was disclosed, so no items: the ids are what was tried."""
    # A path id that is not a uuid is whatever the client sent: kept escaped.
    ids = [escaped(request.match_info[n]) for n in audit.ids if n in request.match_info]
    noted = request.get(ACCESS) or Access()
    return Access(record_ids=(ids + noted.record_ids)[:5], patient_ids=noted.patient_ids[:5])


async def record_refusal(request: web.Request, actor: Actor, audit: Audit, outcome: str) -> None:
    """A not-found or denied attempt, recorded before the refusal is answered."""
    await load_actor_key(request, actor)
    record = access_record(request, actor, audit, outcome, _asked_for(request, audit))
    await request.app[SERVICES].ledger.record(record)


async def changed(request: web.Request, aggregates: Sequence[Any]) -> Access:
    """The records a write changes, as its entry names them when its route says no more."""
    items = []
    for a in aggregates:
        if isinstance(a, AgendaDay):  # an index of the day's slots, about nobody
            continue
        patient = a.id if isinstance(a, Patient) else getattr(a, "patient_id", None)
        establishment = getattr(a, "establishment_id", None)
        if isinstance(a, Patient):
            establishment = a.registered_by_establishment
        items.append(
            disclosed(
                a.id,
                patient_id=patient,
                practitioner_id=getattr(a, "practitioner_id", None),
                establishment_id=establishment,
            )
        )
    return Access(items=items, noted=True)


def _witness(request: web.Request, actor: Actor, audit: Audit) -> Witness:
    """What a write's stores append with its events: the entry saying who changed what,
    and what the answer will disclose of it (then the answer needs no entry of its own)."""
    describe = audit.describe or changed

    async def entry(aggregates: Sequence[Any]) -> AccessRecord:
        access = await describe(request, aggregates)
        access.as_of, access.as_of_tx = AS_OF_ITSELF, 0
        return access_record(request, actor, audit, "allowed", access)

    return Witness(request.app[SERVICES].ledger, entry)


def _covered(answer: Access, written: Sequence[AccessRecord]) -> bool:
    """Whether the entries appended with the changes already say all the answer disclosed."""
    if not written or answer.replay:
        return False
    items = {(i.record_id, i.patient_id): i for w in written for i in w.items}
    for i in answer.items:
        had = items.get((i.record_id, i.patient_id))
        if had is None or not set(i.fields) <= set(had.fields) or i.identified > had.identified:
            return False
    records = {r for w in written for r in w.record_ids}
    patients = {p for w in written for p in w.patient_ids}
    fields = {f for w in written for f in w.fields}
    return (
        set(answer.record_ids) <= records
        and set(answer.patient_ids) <= patients
        and set(answer.fields) <= fields
    )


def audited(audit: Audit, handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        actor: Actor = request[ACTOR]
        request[ACCESS] = Access()
        await load_actor_key(request, actor)
        witness = _witness(request, actor, audit) if audit.action in WRITES else None
        # A write's change and its entry are appended in one statement (infra/witness.py).
        reset = WITNESS.set(witness)
        try:
            response = await handler(request)
        except NotFound:
            await record_refusal(request, actor, audit, "not-found")
            raise
        except Forbidden:
            await record_refusal(request, actor, audit, "denied")
            raise
        except HTTPProblem as e:
            if e.problem.status == 404:
                await record_refusal(request, actor, audit, "not-found")
            elif witness is not None and not witness.written:
                await record_refusal(request, actor, audit, "refused")
            raise
        except Unavailable:
            raise  # nothing changed and nothing was disclosed; the ledger may be down too
        except Exception:
            if witness is not None and not witness.written:
                # Tried and refused (a domain rule, a conflict): nothing changed.
                await record_refusal(request, actor, audit, "refused")
            raise
        finally:
            WITNESS.reset(reset)
        access = request[ACCESS]
        if not access.noted:
            raise RuntimeError(f"{request.method} {request.path} disclosed without noting what")
        if witness is not None and _covered(access, witness.written):
            return response  # its entry went in with the change
        # Fail closed: if this raises (LedgerUnavailable), nothing is sent.
        await request.app[SERVICES].ledger.record(
            access_record(request, actor, audit, "allowed", access)
        )
        return response

    wrapped.carnet_audit = audit  # type: ignore[attr-defined]
    return wrapped


def audit_of(request: web.Request) -> Audit | None:
    handler: Any = request.match_info.handler
    return getattr(handler, "carnet_audit", None)
