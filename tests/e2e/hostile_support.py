"""What the hostile-input properties feed the app: one valid request per
request Struct, every text field derived from the route table, and the
strategies for hostile text, query bytes and header bytes."""

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import msgspec
from hypothesis import strategies as st
from msgspec import inspect as mi

from infra.http import schemas as s
from infra.http.routes import ROUTES, Route
from infra.http.scope_routes import ScopeRequest
from tests.e2e.support import THURSDAY, WEDNESDAY, paris

# One request each body or query Struct accepts, with every field valid:
# the fuzzed field is then the only thing that can make it fail.
VALID: dict[type, dict[str, Any]] = {
    s.RegisterEstablishment: {"name": "Cabinet C", "address": "3 rue C", "city": "Nantes"},
    s.RegisterPractitioner: {
        "name": "Dr Three",
        "specialty": "cardiology",
        "establishment_id": "{establishment}",
        "motives": [{"id": "visit", "name": "Visit", "duration_minutes": 20}],
    },
    s.MotiveIn: {"id": "visit", "name": "Visit", "duration_minutes": 20},
    s.AddAbsence: {
        "start": paris(THURSDAY, "09:00"),
        "end": paris(THURSDAY, "10:00"),
        "reason": "training",
    },
    s.RegisterPatient: {
        "first_name": "Ana",
        "last_name": "Lima",
        "birth_date": "1990-02-03",
        "sex": "female",
        "email": "ana@example.org",
        "phone": "+33 6 11 22 33 44",
    },
    s.ChangeContactDetails: {"email": "alice@example.org", "phone": "+33 6 00 00 00 01"},
    s.BookAppointment: {
        "practitioner_id": "{practitioner}",
        "motive_id": "consultation",
        "start": paris(WEDNESDAY, "14:00"),
    },
    s.CancelAppointment: {"reason": "ill"},
    s.IssueToken: {"actor_kind": "analyst", "label": "fuzz"},
    s.RevokeToken: {"reason": "lost"},
    s.LedgerQueryIn: {},
    ScopeRequest: {"token_ids": ["00000000-0000-4000-8000-000000000001"]},
    s.EstablishmentsQuery: {},
    s.PractitionersQuery: {},
    s.SearchQuery: {"from": WEDNESDAY, "to": WEDNESDAY},
    s.AvailabilityQuery: {"motive_id": "consultation", "from": WEDNESDAY, "to": WEDNESDAY},
}


def actor_for(route: Route) -> str:
    """Who sends it: an actor allowed to, so the text is what is judged."""
    if route.path in ("/ledger", "/analyst/scopes"):
        return "analyst"
    if route.path.endswith(("/motives", "/absences")):
        return "practitioner"
    if route.query is not None or route.path.startswith(("/patients/{", "/appointments")):
        return "patient"
    return "admin"


def _text_paths(t: mi.Type, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Where a Struct holds text: one path per `str` field, nested ones included."""
    if isinstance(t, mi.StructType):
        for f in t.fields:
            yield from _text_paths(f.type, (*path, f.encode_name))
    elif isinstance(t, mi.ListType):
        yield from _text_paths(t.item_type, (*path, 0))
    elif isinstance(t, mi.UnionType):
        for member in t.types:
            yield from _text_paths(member, path)
    elif isinstance(t, mi.StrType):
        yield path


class Target(msgspec.Struct, frozen=True):
    route: Route
    where: str  # "body" or "query"
    cls: type
    path: tuple[str | int, ...]

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        return f"{self.route.method} {self.route.path} {self.where} {self.path}"


TARGETS = sorted(
    (
        Target(route, where, cls, path)
        for route in ROUTES
        for where, cls in (("body", route.body), ("query", route.query))
        if cls is not None
        for path in _text_paths(mi.type_info(cls))
    ),
    key=repr,
)
BODY_TARGETS = [t for t in TARGETS if t.where == "body"]
QUERY_TARGETS = [t for t in TARGETS if t.where == "query"]

# Characters that broke something once, or that a careless edge lets through.
NASTY = "\x00\x01\x07\t\n\r\x1b\x7f\x80\x85\x9f\u00a0\u2028\u202e\ufeff\ud800\udfff\U0010ffff"
anything = st.characters(exclude_categories=())  # lone surrogates included
hostile_text = st.one_of(
    # Ordinary text with one nasty character in it, most often a NUL.
    st.tuples(st.text(max_size=8), st.sampled_from("\x00" * 6 + NASTY), st.text(max_size=8)).map(
        "".join
    ),
    st.text(anything, max_size=40),
    st.text(st.sampled_from(NASTY) | anything, max_size=12),
    st.builds(lambda c, n: c * n, st.sampled_from("aé\x00😀"), st.integers(190, 600)),
)
# Query strings travel percent-encoded: any bytes at all, not only UTF-8.
hostile_query = st.one_of(
    hostile_text.map(lambda t: quote(t.encode("utf-8", "surrogatepass"), safe="")),
    st.binary(max_size=30).map(lambda b: quote(b, safe="")),
)
# Header values are raw bytes; CR and LF would end the header, not fill it.
hostile_header = st.one_of(
    st.binary(max_size=80),
    hostile_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.builds(
        lambda c, n: c * n, st.sampled_from([b"\xff", b"a", b"\xc3\xa9"]), st.integers(0, 9000)
    ),
).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
