"""A seeded, reproducible breach: weeks of ordinary traffic, then an incident,
then the changes that make today's values differ from those disclosed.

Everything goes through the HTTP API of a server on a real TCP port, from
several source addresses, with the app's clock (the tests' FakeClock) moved
forward to spread the traffic over weeks and to place the incident. The
story, with the default plan:

1. Setup, the first morning: five establishments in four cities, their
   desks and practitioners; two practice softwares (A syncs three
   establishments, with the patients' identity at two of them and masked at
   the third; B books and syncs the other two, never seeing identities);
   patients registered at a desk, half of them with an app account.
2. Ordinary days: desks, patients and software B book, patients cancel and
   read their appointments, desks reschedule, both softwares sync today's
   and tomorrow's agendas from 127.0.0.1.
3. Three days before the incident, "Eve Mallory" opens an account, books
   twice and reads her list.
4. The incident, at 13:00 on a weekday in the third week: software A's
   token is used from 127.0.0.2 by a script that probes every practitioner
   in A's cities and walks every agenda it can reach, while the real
   software goes on syncing with the same token. At 16:00 Eve's account,
   from 127.0.0.3, asks for other people's appointments until it is
   suspended.
5. The next day, a fifth of the future appointments the attacker saw are
   cancelled or rescheduled and a third of the patients concerned change
   their contact details; ordinary traffic goes on to the end.

The ground truth (tests/e2e/scenario_truth.py) is computed from the answers
each agent received, never from the ledger.
"""

import random
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from yarl import URL

from tests.conftest import FakeClock
from tests.e2e.scenario_incident import Attack, aftermath, enumerate_ids, open_account
from tests.e2e.scenario_net import Net
from tests.e2e.scenario_traffic import Op, business_days, day_ops, morning, run_ops, sync
from tests.e2e.scenario_truth import Truth, truth_of
from tests.e2e.scenario_world import Cast, build_world

USUAL_ADDRESS = "127.0.0.1"


@dataclass(frozen=True)
class Plan:
    """How big a world and how long a story: `scale` grows patients, practitioners, bookings."""

    seed: int = 2020
    scale: float = 1.0
    weeks: int = 3

    @property
    def patients(self) -> int:
        return max(20, round(200 * self.scale))

    @property
    def per_practice(self) -> int:
        return max(2, round(2 * self.scale))

    @property
    def bookings_per_day(self) -> int:
        return max(5, round(25 * self.scale))


@dataclass
class Outcome:
    cast: Cast
    attacker: Truth  # software A's token, from another address
    legit: Truth  # the same token, from its usual address, the whole time
    enumerator: Truth  # Eve's account, from its first request from the new address on
    account: str  # Eve's patient id
    account_token_id: str
    changed: dict[str, dict[str, Any]]  # appointments changed after the incident, as they are now
    contacts_then: dict[str, tuple[str, str]]  # every patient's (email, phone) at the incident
    contacts_now: dict[str, tuple[str, str]]  # those who changed them afterwards

    @property
    def token_id(self) -> str:
        return self.cast.stolen["token_id"]


async def run_scenario(
    base: URL, admin_token: str, clock: FakeClock, plan: Plan | None = None
) -> Outcome:
    plan = plan or Plan()
    net = Net(base, clock, random.Random(plan.seed))
    try:
        return await _story(net, admin_token, plan)
    finally:
        await net.close()


async def _story(net: Net, admin_token: str, plan: Plan) -> Outcome:
    cast = await build_world(net, admin_token, plan.patients, plan.per_practice)
    days = business_days(net.clock.now().date(), plan.weeks * 5)
    incident = round(len(days) * 0.7)
    changed: set[str] = set()
    contacts_then: dict[str, tuple[str, str]] = {}
    contacts_now: dict[str, tuple[str, str]] = {}
    account, account_token_id = None, ""
    for n, today in enumerate(days):
        morning(cast, today)
        net.settle()
        ops = day_ops(cast, today, plan.bookings_per_day)
        if n == incident - 3:
            account, account_token_id = await open_account(cast, today)
        if n == incident:
            assert account is not None
            half = len(ops) // 2
            await run_ops(cast, ops[:half])
            # The real software syncs at least once while the attacker walks.
            tomorrow = today + timedelta(days=1)
            meanwhile: list[Op] = [*ops[half:], partial(sync, cast, "a", (today, tomorrow))]
            await Attack(cast, meanwhile).run(today)
            await enumerate_ids(cast, today, account)
            account.app = None  # suspended: nothing more from that account
            continue
        if n == incident + 1:
            seen = truth_of(net.of("attacker"), cast.registry)
            contacts_then = dict(cast.registry.contacts)
            changed, contacts_now = await aftermath(cast, today, seen.records, seen.patients)
        await run_ops(cast, ops)
    assert account is not None
    # Today's values of what changed, as an admin reads them now.
    now = {
        a: (await cast.admin.get(f"/appointments/{a}")).body for a in cast.registry.ordered(changed)
    }
    return Outcome(
        cast=cast,
        attacker=truth_of(net.of("attacker"), cast.registry),
        legit=truth_of(net.of("software-a"), cast.registry),
        enumerator=truth_of(net.of("enumerator"), cast.registry),
        account=account.id,
        account_token_id=account_token_id,
        changed=now,
        contacts_then=contacts_then,
        contacts_now=contacts_now,
    )
