"""Crypto-shredding: a data key per data subject, wrapped by the key-encryption key.

The personal fields of events (domain/personal.py) are stored as envelopes,
`{"$s": subject id, "$c": nonce + AES-GCM ciphertext}`, each under its data
subject's key: in `carnet.events`, and so in every message of the NATS
stream, which carries the stored bytes as they are. A data key is stored
only wrapped (AES-GCM) by the key-encryption key (KEK), which comes from
configuration and never reaches the database. Erasing a person destroys
the wrapped key (`shred`): their fields read back as None (erased) ever
after, in every process, replay and rebuild, with no exception raised.

`Keyring` (one per pool) creates, loads and shreds keys; the keys it has
loaded live in `KEYS`, process-wide (subject ids are unique across
databases), so that decoding, which is synchronous, finds them. The event
store loads the keys of every page it reads before anyone decodes it
(`infra/eventstore.py`), and the repository creates the keys of what it
writes before encoding it (`infra/codec.py`). A decoder that meets a subject
whose key was never loaded raises KeyNotLoaded rather than guess "erased".

Keys another process shreds are forgotten here within `REFRESH` seconds
(a read reloads keys older than that); the shredding process forgets at
once. The read models are cleared by the erasure's own event.
"""

import base64
import binascii
import dataclasses
import hashlib
import os
import re
import time
from collections.abc import Iterable
from typing import Any
from uuid import UUID

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from domain.errors import DataErased
from infra.pgerrors import database_unavailable
from infra.schema import SCHEMA
from services.ports import Unavailable

REFRESH = 60.0  # seconds a loaded key is used before it is checked again
_NONCE = 12
# The canary: a constant sealed by the KEK, to tell a wrong KEK at start.
_CANARY = b"carnet key-encryption key check v1"
_UUID = rb"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
_SUBJECT = re.compile(rb'"\$s":"' + _UUID + rb'"|"enc:v1:' + _UUID + rb":")
# A sealed text field (an access entry's client address and user agent): one
# string, so that the entry's hash covers the ciphertext and verifies for ever.
TEXT_PREFIX = "enc:v1:"


class KeyError_(Exception):
    """A key-encryption key problem that must stop the start."""


class KeyNotLoaded(Exception):
    """A sealed field whose subject's key was never loaded by this process (a bug)."""


class SubjectErased(DataErased):
    """New personal data for a data subject whose key has been destroyed."""

    def __init__(self, subject: UUID) -> None:
        super().__init__("this person's data has been erased", field="patient_id")
        self.subject = subject


class Kek:
    """A key-encryption key: 32 bytes, known by a short id derived from it."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise KeyError_(f"a key-encryption key is 32 bytes, not {len(key)}")
        self.id = hashlib.sha256(b"carnet kek id\0" + key).hexdigest()[:16]
        self._aead = AESGCM(key)

    def wrap(self, label: bytes, secret: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, secret, label)

    def unwrap(self, label: bytes, wrapped: bytes) -> bytes:
        return self._aead.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], label)


def parse_kek(text: str, where: str) -> Kek:
    """A KEK from its base64 text (standard or URL-safe alphabet, padding optional)."""
    text = text.strip().replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise KeyError_(f"{where}: not base64") from None
    if len(raw) != 32:
        raise KeyError_(
            f"{where}: a key-encryption key is 32 bytes in base64 "
            f"(e.g. `openssl rand -base64 32`), not {len(raw)} bytes"
        )
    return Kek(raw)


def new_kek_text() -> str:
    return base64.b64encode(os.urandom(32)).decode()


class _Keys:
    """The data keys this process has loaded: subject -> (AEAD or None: shredded, when)."""

    def __init__(self) -> None:
        self._keys: dict[UUID, tuple[AESGCM | None, float]] = {}

    def __contains__(self, subject: object) -> bool:
        return subject in self._keys

    def live(self, subject: UUID) -> bool:
        entry = self._keys.get(subject)
        return entry is not None and entry[0] is not None

    def due(self, subjects: Iterable[UUID], now: float) -> set[UUID]:
        """Those never loaded, or loaded more than REFRESH seconds ago."""
        out = set()
        for s in subjects:
            entry = self._keys.get(s)
            if entry is None or now - entry[1] > REFRESH:
                out.add(s)
        return out

    def put(self, subject: UUID, key: bytes | None, now: float) -> None:
        self._keys[subject] = (AESGCM(key) if key is not None else None, now)

    def shredded(self, subject: UUID) -> None:
        self._keys[subject] = (None, time.monotonic())

    def seal(self, subject: UUID, field: str, plaintext: bytes) -> dict[str, str]:
        entry = self._keys.get(subject)
        if entry is None:
            raise KeyNotLoaded(f"no data key loaded for {subject}")
        if entry[0] is None:
            raise SubjectErased(subject)
        nonce = os.urandom(_NONCE)
        sealed = nonce + entry[0].encrypt(nonce, plaintext, subject.bytes + field.encode())
        return {"$s": str(subject), "$c": base64.b64encode(sealed).decode()}

    def open(self, envelope: dict[str, Any], field: str) -> bytes | None:
        """The plaintext, or None if the subject's key is destroyed."""
        subject = UUID(envelope["$s"])
        entry = self._keys.get(subject)
        if entry is None:
            raise KeyNotLoaded(f"no data key loaded for {subject}")
        if entry[0] is None:
            return None
        sealed = base64.b64decode(envelope["$c"])
        return entry[0].decrypt(sealed[:_NONCE], sealed[_NONCE:], subject.bytes + field.encode())

    def seal_text(self, subject: UUID, field: str, text: str) -> str:
        """`text` sealed as one string: enc:v1:<subject>:<base64> ("" stays "")."""
        if not text:
            return text
        envelope = self.seal(subject, field, text.encode())
        return f"{TEXT_PREFIX}{envelope['$s']}:{envelope['$c']}"

    def open_text(self, text: str, field: str) -> str:
        """A sealed text opened; "" once its subject is erased; anything else as it is
        (written before sealing, or by a pool without a keyring)."""
        if not text.startswith(TEXT_PREFIX):
            return text
        subject, _, sealed = text[len(TEXT_PREFIX) :].partition(":")
        try:
            plain = self.open({"$s": subject, "$c": sealed}, field)
        except (ValueError, InvalidTag, binascii.Error):
            return text  # not ours after all: kept as recorded
        return "" if plain is None else plain.decode(errors="replace")


KEYS = _Keys()


def opened(record: Any) -> Any:
    """An access record with its client address and user agent opened, for reading
    ("" once the actor is erased). What the chain hashes is the stored record: this
    is for projections and answers, never for verification."""
    ip = KEYS.open_text(record.client_ip, "client_ip")
    agent = KEYS.open_text(record.user_agent, "user_agent")
    if (ip, agent) == (record.client_ip, record.user_agent):
        return record
    return dataclasses.replace(record, client_ip=ip, user_agent=agent)


def is_envelope(value: object) -> bool:
    return isinstance(value, dict) and "$s" in value and "$c" in value


def subjects_in(states: Iterable[bytes]) -> set[UUID]:
    """The subjects whose keys these stored states need (a scan, no decoding)."""
    found: set[bytes] = set()
    for state in states:
        if b'"$s":"' in state or b'"enc:v1:' in state:
            for dict_form, text_form in _SUBJECT.findall(state):
                found.add(dict_form or text_form)
    return {UUID(s.decode()) for s in found}


_KEYS_TABLE = f"{SCHEMA}.subject_keys"
_CHECK_TABLE = f"{SCHEMA}.key_encryption"
_CREATE = f"""
WITH wanted AS (
    SELECT * FROM unnest($1::uuid[], $2::bytea[]) AS w(subject_id, wrapped)
), made AS (
    INSERT INTO {_KEYS_TABLE} (subject_id, kek_id, wrapped)
    SELECT subject_id, $3, wrapped FROM wanted
    ON CONFLICT (subject_id) DO NOTHING
    RETURNING subject_id, kek_id, wrapped
)
SELECT subject_id, kek_id, wrapped FROM made
UNION ALL
SELECT k.subject_id, k.kek_id, k.wrapped FROM {_KEYS_TABLE} k
WHERE k.subject_id = ANY($1::uuid[]) AND k.subject_id NOT IN (SELECT subject_id FROM made)
"""
_LOAD = f"SELECT subject_id, kek_id, wrapped FROM {_KEYS_TABLE} WHERE subject_id = ANY($1::uuid[])"
_SHRED = f"""UPDATE {_KEYS_TABLE} SET wrapped = NULL, shredded_at = coalesce(shredded_at, now())
WHERE subject_id = $1"""
_SHRED_ABSENT = f"""INSERT INTO {_KEYS_TABLE} (subject_id, kek_id, wrapped, shredded_at)
VALUES ($1, '', NULL, now()) ON CONFLICT (subject_id) DO NOTHING"""


class Keyring:
    """The data keys of one database, unwrapped with the KEK (and, while a
    rotation is under way, the previous ones)."""

    def __init__(self, pool: asyncpg.Pool, kek: Kek, previous: Iterable[Kek] = ()) -> None:
        self.pool = pool
        self.kek = kek
        self._keks = {k.id: k for k in (*previous, kek)}

    def _unwrap(self, subject: UUID, kek_id: str, wrapped: bytes | None) -> bytes | None:
        if wrapped is None:
            return None
        kek = self._keks.get(kek_id)
        if kek is None:
            raise KeyError_(
                f"data keys are wrapped by key-encryption key {kek_id}, which is not "
                "configured (CARNET_KEK, or CARNET_KEK_PREVIOUS during a rotation)"
            )
        try:
            return kek.unwrap(subject.bytes, wrapped)
        except InvalidTag:
            raise KeyError_(f"the data key of {subject} does not unwrap with {kek_id}") from None

    async def check(self, conn: Any | None = None) -> None:
        """Refuse a KEK that is not the one this database's keys are wrapped by.

        The first start records the canary; a later start with another key,
        or none that matches, raises KeyError_ with what to do."""
        db = conn or self.pool
        rows = await db.fetch(f"SELECT kek_id, canary FROM {_CHECK_TABLE}")
        if not rows:
            await db.execute(
                f"INSERT INTO {_CHECK_TABLE} (kek_id, canary) VALUES ($1, $2) "
                "ON CONFLICT (kek_id) DO NOTHING",
                self.kek.id,
                self.kek.wrap(b"canary", _CANARY),
            )
            rows = await db.fetch(f"SELECT kek_id, canary FROM {_CHECK_TABLE}")
        known = {r["kek_id"]: bytes(r["canary"]) for r in rows}
        for kek_id, canary in known.items():
            kek = self._keks.get(kek_id)
            if kek is None:
                continue
            try:
                if kek.unwrap(b"canary", canary) == _CANARY:
                    if kek is not self.kek and self.kek.id not in known:
                        await db.execute(
                            f"INSERT INTO {_CHECK_TABLE} (kek_id, canary) VALUES ($1, $2) "
                            "ON CONFLICT (kek_id) DO NOTHING",
                            self.kek.id,
                            self.kek.wrap(b"canary", _CANARY),
                        )
                    return
            except InvalidTag:
                pass
        ids = ", ".join(sorted(known))
        raise KeyError_(
            f"the configured key-encryption key ({self.kek.id}) is not the one this "
            f"database's personal data is encrypted with ({ids}): set CARNET_KEK (or "
            "kek_file) to that key; without it, no personal data can be read or written"
        )

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            return await self.pool.fetch(sql, *args)
        except Exception as e:
            if database_unavailable(e):
                raise Unavailable(str(e)) from e
            raise

    async def load(self, subjects: Iterable[UUID]) -> None:
        """Make the keys of `subjects` known to KEYS (those not loaded lately)."""
        now = time.monotonic()
        due = KEYS.due(subjects, now)
        if not due:
            return
        rows = await self._fetch(_LOAD, list(due))
        for r in rows:
            subject = r["subject_id"]
            KEYS.put(subject, self._unwrap(subject, r["kek_id"], r["wrapped"]), now)
            due.discard(subject)
        for subject in due:  # no key at all: nothing of theirs can be read
            KEYS.put(subject, None, now)

    async def ensure(self, subjects: Iterable[UUID]) -> None:
        """Create the keys of `subjects` that do not exist yet, and load them all.

        Raises SubjectErased for a subject whose key is destroyed."""
        now = time.monotonic()
        wanted = {s for s in subjects if not KEYS.live(s)}
        for _ in range(3):
            if not wanted:
                return
            order = sorted(wanted)
            fresh = [os.urandom(32) for _ in order]
            wrapped = [self.kek.wrap(s.bytes, k) for s, k in zip(order, fresh, strict=True)]
            rows = await self._fetch(_CREATE, order, wrapped, self.kek.id)
            for r in rows:
                subject = r["subject_id"]
                key = self._unwrap(subject, r["kek_id"], r["wrapped"])
                KEYS.put(subject, key, now)
                wanted.discard(subject)
                if key is None:
                    raise SubjectErased(subject)
            # A key another transaction made in the meantime is not in this
            # statement's snapshot: the next round reads it.
        raise KeyNotLoaded(f"could not create or read the data keys of {sorted(wanted)}")

    async def shred(self, subject: UUID, conn: Any | None = None) -> None:
        """Destroy the subject's data key: their sealed fields are unreadable from now on."""
        db = conn or self.pool
        await db.execute(_SHRED, subject)
        await db.execute(_SHRED_ABSENT, subject)
        KEYS.shredded(subject)

    async def rewrap(self) -> int:
        """Wrap every live data key with the current KEK (after a rotation); how many."""
        done = 0
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT subject_id, kek_id, wrapped FROM {_KEYS_TABLE} "
                "WHERE wrapped IS NOT NULL AND kek_id <> $1",
                self.kek.id,
            )
            for r in rows:
                key = self._unwrap(r["subject_id"], r["kek_id"], r["wrapped"])
                assert key is not None
                await conn.execute(
                    f"UPDATE {_KEYS_TABLE} SET kek_id = $2, wrapped = $3 "
                    "WHERE subject_id = $1 AND kek_id = $4",
                    r["subject_id"],
                    self.kek.id,
                    self.kek.wrap(r["subject_id"].bytes, key),
                    r["kek_id"],
                )
                done += 1
        return done


class PostgresShredder:
    """The Shredder port: the subject's key destroyed, and with it the one copy
    of their name outside the log (their tokens' labels), in one transaction."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def shred(self, subject: UUID) -> None:
        ring = keyring_of(self.pool)
        if ring is None:
            raise KeyError_("this database has no keyring: nothing can be shredded")
        async with self.pool.acquire() as conn, conn.transaction():
            await ring.shred(subject, conn)
            await conn.execute(
                f"UPDATE {SCHEMA}.tokens SET display_name = '' WHERE actor_id = $1", subject
            )


# Pool -> its keyring, by identity (asyncpg pools take no weak reference);
# close_pool forgets it (infra/bootstrap.py).
_RINGS: dict[int, Keyring] = {}


def install(keyring: Keyring) -> None:
    _RINGS[id(keyring.pool)] = keyring


def uninstall(pool: Any) -> None:
    ring = _RINGS.get(id(pool))
    if ring is not None and ring.pool is pool:
        del _RINGS[id(pool)]


def keyring_of(pool: Any) -> Keyring | None:
    ring = _RINGS.get(id(pool))
    return ring if ring is not None and ring.pool is pool else None
