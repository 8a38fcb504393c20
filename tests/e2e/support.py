"""Small helpers shared by the end-to-end tests: times, bookings, problems."""

from datetime import UTC, datetime
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from domain.ledger import LEDGER_ID
from infra.http.keys import Services
from infra.http.throttle import ThrottlePolicy
from tests.world import World

PARIS = ZoneInfo("Europe/Paris")

# A throttle that never slows anyone down but watches for enumeration:
# the 20th not-found or denied look-up within a minute suspends the token.
WATCHFUL = ThrottlePolicy(
    rate_per_second=10_000,
    burst=10_000,
    enumeration_misses=20,
    enumeration_window=60,
    suspend_on_enumeration=True,
)
PROBLEM_JSON = "application/problem+json"
# A patient the tests register over HTTP (a walk-in at a desk).
WALK_IN = {
    "first_name": "Carl",
    "last_name": "Walk-In",
    "birth_date": "1975-03-03",
    "sex": "male",
    "email": "carl@example.org",
    "phone": "+33 6 44 44 44 44",
}
PROBLEM_BASE = "https://carnet.dev/problems/"

# The fixtures' clock starts on Tuesday 2026-12-01 at 08:00 in Paris.
TUESDAY = "2026-12-01"
WEDNESDAY = "2026-12-02"
THURSDAY = "2026-12-03"


def paris(day: str, hhmm: str) -> str:
    """A Paris wall-clock time as the UTC instant a client would send."""
    local = datetime.fromisoformat(f"{day}T{hhmm}").replace(tzinfo=PARIS)
    return local.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def book(
    client: TestClient,
    world: World,
    start: str,
    *,
    who: str = "patient",
    motive: str = "consultation",
    practitioner: UUID | None = None,
    patient: UUID | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> ClientResponse:
    body: dict[str, Any] = {
        "practitioner_id": str(practitioner or world.practitioner),
        "motive_id": motive,
        "start": start,
        **extra,
    }
    if patient is not None:
        body["patient_id"] = str(patient)
    return await client.post(
        "/appointments", json=body, headers={**world.auth(who), **(headers or {})}
    )


async def booked(client: TestClient, world: World, start: str, **kwargs: Any) -> dict[str, Any]:
    """Book and insist it worked; the appointment as the API returned it."""
    response = await book(client, world, start, **kwargs)
    assert response.status == 201, await response.text()
    appointment: dict[str, Any] = await response.json()
    return appointment


async def ok(response: ClientResponse, status: int = 200) -> Any:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def problem(response: ClientResponse, status: int, field: str | None = None) -> Any:
    """Assert an RFC 9457 answer with this status naming this field, and no trace."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == PROBLEM_JSON, text
    assert "Traceback" not in text and 'File "' not in text, text
    body = await response.json(content_type=None)
    assert body["status"] == status
    assert body["type"].startswith(PROBLEM_BASE)
    assert body["title"]
    if field is not None:
        assert body["field"] == field, body
    return body


async def agenda(client: TestClient, world: World, day: str, who: str = "practitioner") -> Any:
    response = await client.get(
        f"/practitioners/{world.practitioner}/agenda", params={"date": day}, headers=world.auth(who)
    )
    # The agenda lists every appointment of the day; the booked ones hold time.
    return [a for a in (await ok(response))["appointments"] if a["status"] == "booked"]


async def free_starts(
    client: TestClient, world: World, first: str, last: str, motive: str = "consultation"
) -> list[str]:
    response = await client.get(
        f"/practitioners/{world.practitioner}/availability",
        params={"motive_id": motive, "from": first, "to": last},
        headers=world.auth("patient"),
    )
    return [slot["start"] for slot in (await ok(response))["slots"]]


async def log_position(services: Services) -> int:
    """The last position of the domain's events: it must not move on a refusal.

    Access-ledger entries are left out: a refusal is itself an access to record.
    """
    position: int = await services.read.pool.fetchval(
        "SELECT coalesce(max(position), 0) FROM carnet.events WHERE originator_id <> $1",
        LEDGER_ID,
    )
    return position
