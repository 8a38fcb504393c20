"""`carnet verify [--anchors FILE]`: every shard, every anchor, and the anchors kept elsewhere.

What it checks, and what each check catches:

- every shard's chain from genesis (`ChainVerifier`): an entry altered,
  deleted, inserted or moved inside a shard, named by shard and version;
- the anchors' own chain (version 1, 2, 3…, each hashing the one before and
  the heads it holds): an anchor altered, removed or inserted;
- every anchor's heads exist in their shards with the hash anchored: a shard
  cut back (its tail deleted) or rewritten from some entry on after an
  anchor committed its head, which the chain alone cannot show;
- given an external copy of the anchors (the file the ledger appends to, or
  what was published to NATS), each of them equals the database's anchor of
  that version, and the database has them all: the anchors themselves cut
  off the end, or the whole ledger rewritten with new anchors.

An attacker who rewrites everything after the last anchor that left the
database is caught only at the next anchor; the interval bounds that window.
"""

import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from domain.ledger import (
    GENESIS,
    ChainVerifier,
    Finding,
    LedgerAnchored,
    ShardHead,
    anchor_hash,
)
from infra.codec import TypedMapper
from infra.ledger import UnreadableEntry, _stream, read_anchors, shard_numbers


@dataclass
class Report:
    """What `verify_all` found: counts for the intact case, findings otherwise."""

    entries: int = 0
    shards: dict[int, int] = field(default_factory=dict)  # shard -> entries
    anchors: int = 0
    external: int | None = None  # anchors compared with the external copy (None: none given)
    chain: Finding | None = None  # the first bad entry of a shard
    findings: list[str] = field(default_factory=list)  # everything else, in words

    @property
    def intact(self) -> bool:
        return self.chain is None and not self.findings

    def lines(self) -> list[str]:
        """The printable report; the first line keeps the format of before shards."""
        if self.intact:
            shards = ", ".join(f"{n}: {c}" for n, c in sorted(self.shards.items()))
            out = [
                f"access ledger intact: {self.entries} entries, hash chain verified",
                f"shards: {len(self.shards)} ({shards})",
                f"anchors: {self.anchors}, chain verified, every anchored head in its shard",
            ]
            if self.external is not None:
                out.append(f"external anchors: {self.external}, all equal to the database's")
            return out
        if self.chain is not None:
            c = self.chain
            first = (
                f"access ledger TAMPERED: first bad entry is shard {c.shard} #{c.version} "
                f"({c.kind}): {c.detail}"
            )
            rest = self.findings
        else:
            first, rest = f"access ledger TAMPERED: {self.findings[0]}", self.findings[1:]
        return [first, *rest]


async def verify_all(
    pool: asyncpg.Pool,
    anchors_file: Path | None = None,
    external: Iterable[dict[str, Any]] | None = None,
    page: int = 1000,
) -> Report:
    """Verify every shard, every anchor and, if given, the anchors kept elsewhere.

    `external` is anchors as published (dicts as in the anchor file's lines),
    e.g. read back from the NATS stream; `anchors_file` is read the same way.
    """
    mapper = TypedMapper()
    report = Report()
    anchors = await _anchor_chain(pool, mapper, report)
    wanted: dict[int, dict[int, str]] = {}
    for anchor in anchors:
        for head in anchor.heads:
            wanted.setdefault(head.shard, {})[head.version] = head.hash
    found: dict[int, dict[int, str]] = {}
    for shard in await shard_numbers(pool, list(wanted)):
        count, hashes = await _verify_shard(pool, shard, page, set(wanted.get(shard, ())), report)
        report.shards[shard] = count
        report.entries += count
        found[shard] = hashes
    _heads_in_shards(anchors, found, report)
    published = list(external or [])
    if anchors_file is not None:
        published += _read_file(anchors_file, report)
    if anchors_file is not None or external is not None:
        report.external = len(published)
        _compare_external(anchors, published, report)
    return report


async def _verify_shard(
    pool: asyncpg.Pool, shard: int, page: int, anchored: set[int], report: Report
) -> tuple[int, dict[int, str]]:
    """One shard from genesis; its entry count and the hashes of its anchored versions."""
    verifier = ChainVerifier()
    count, hashes = 0, {}
    async with contextlib.aclosing(_stream(pool, page, shard=shard)) as chain:
        async for item in chain:
            count += 1
            if isinstance(item, UnreadableEntry):
                verifier.feed_unreadable(item.version, item.detail)
                continue
            if item.version in anchored:
                hashes[item.version] = item.hash
            if not verifier.settled:
                verifier.feed(item)
    finding = verifier.result()
    if finding is not None and report.chain is None:
        report.chain = Finding(finding.kind, finding.version, finding.detail, shard)
    return count, hashes


async def _anchor_chain(
    pool: asyncpg.Pool, mapper: TypedMapper, report: Report
) -> list[LedgerAnchored]:
    """The anchors that chain correctly (up to the first bad one), noting what is wrong."""
    good: list[LedgerAnchored] = []
    prev = GENESIS
    for n, item in enumerate(await read_anchors(pool, mapper), start=1):
        report.anchors += 1
        if isinstance(item, UnreadableEntry):
            report.findings.append(f"anchor #{item.version} is unreadable: {item.detail}")
            break
        heads = tuple(ShardHead(*h) for h in item.heads)
        if item.originator_version != n:
            report.findings.append(
                f"anchor #{n} is missing (the next one is #{item.originator_version})"
            )
            break
        if anchor_hash(item.prev_hash, heads) != item.hash:
            report.findings.append(f"anchor #{n} was altered: its heads do not match its hash")
            break
        if item.prev_hash != prev:
            report.findings.append(f"anchor #{n} does not link to anchor #{n - 1}")
            break
        prev = item.hash
        good.append(item)
    return good


def _heads_in_shards(
    anchors: list[LedgerAnchored], found: dict[int, dict[int, str]], report: Report
) -> None:
    for anchor in anchors:
        for shard, version, digest in anchor.heads:
            have = found.get(shard, {}).get(version)
            if have is None:
                report.findings.append(
                    f"shard {shard} entry #{version}, anchored by anchor "
                    f"#{anchor.originator_version}, is gone (the shard was cut back)"
                )
            elif have != digest:
                report.findings.append(
                    f"shard {shard} entry #{version} is not the entry anchor "
                    f"#{anchor.originator_version} committed (the shard was rewritten)"
                )


def _read_file(path: Path, report: Report) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        report.findings.append(f"the anchor file {path} cannot be read: {e}")
        return []
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            if not isinstance(value, dict) or not isinstance(value.get("anchor"), int):
                raise ValueError("not an anchor")
        except ValueError as e:
            report.findings.append(f"{path} line {number} is not an anchor: {e}")
            continue
        out.append(value)
    return out


def _compare_external(
    anchors: list[LedgerAnchored], published: list[dict[str, Any]], report: Report
) -> None:
    by_version = {a.originator_version: a for a in anchors}
    for p in published:
        version = p["anchor"]
        mine = by_version.get(version)
        if mine is None:
            report.findings.append(
                f"external anchor #{version} is not in the database (it has "
                f"{len(anchors)} good anchors): anchors or entries were cut off"
            )
            continue
        heads = [list(h) for h in mine.heads]
        if p.get("hash") != mine.hash or p.get("heads") != heads:
            report.findings.append(
                f"external anchor #{version} differs from the database's: the ledger was rewritten"
            )
