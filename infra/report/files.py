"""The artifacts of a scope, written into one folder.

- `scope.json`: the whole Scope (services/scoping/model.py), keys in a fixed
  order, documented field by field in docs/analyst.md;
- `notify-<establishment>.csv`: per data controller, the patients to inform
  with the identity and contact details they had when their data was
  disclosed (`notify-platform.csv` for records no establishment controls);
- `report.md`, `report.html` and `timeline.svg`: the Art. 33 draft.

CSV cells that a spreadsheet would read as a formula (starting with = + - @,
a tab or a carriage return) get a leading apostrophe; a phone number
"+33 …" is therefore written "'+33 …".
"""

import csv
import io
import re
from pathlib import Path

import msgspec

from infra.report import draft, render
from infra.report.svg import timeline_svg
from services.scoping import Scope
from services.scoping.model import ScopePatient

_encoder = msgspec.json.Encoder(order="deterministic")
_SAFE_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")
COLUMNS = (
    "patient_id",
    "identified",
    "first_name",
    "last_name",
    "birth_date",
    "email",
    "phone",
    "categories",
    "records",
    "first_access",
    "last_access",
    "as_of",
)


def encode(scope: Scope) -> bytes:
    """scope.json: the same bytes for the same scope."""
    return _encoder.encode(scope)


def cell(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA) else text


def notify_name(establishment_id: str) -> str:
    if not establishment_id:
        return "notify-platform.csv"
    # Ids come from our own records, but a file name must never depend on that.
    safe = establishment_id if _SAFE_NAME.fullmatch(establishment_id) else "unnamed"
    return f"notify-{safe}.csv"


def _row(p: ScopePatient) -> list[str]:
    contact = p.contact or {}
    values: list[object] = [
        p.patient_id,
        "yes" if p.identified else "no (pseudonymous data only)",
        *(contact.get(k) for k in ("first_name", "last_name", "birth_date", "email", "phone")),
        " ".join(p.categories),
        " ".join(p.records),
        p.first_at.isoformat(),
        p.last_at.isoformat(),
        p.as_of,
    ]
    return [cell(v) for v in values]


def notify_csv(scope: Scope, establishment_id: str) -> str:
    people = {p.patient_id: p for p in scope.patients}
    place = next(e for e in scope.establishments if e.establishment_id == establishment_id)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for pid in sorted({*place.patients_identified, *place.patients_concerned_only}):
        writer.writerow(_row(people[pid]))
    return out.getvalue()


def write_artifacts(scope: Scope, out: Path) -> list[Path]:
    """Write every artifact into `out` (created if need be); the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    svg = timeline_svg(scope)
    blocks = draft.blocks(scope, svg)
    files = {
        "scope.json": msgspec.json.format(encode(scope), indent=2),
        "report.md": render.markdown(blocks).encode(),
        "report.html": render.html(draft.TITLE, blocks).encode(),
        "timeline.svg": svg.encode(),
    }
    for place in scope.establishments:
        files[notify_name(place.establishment_id)] = notify_csv(
            scope, place.establishment_id
        ).encode()
    written = []
    for name, content in files.items():
        path = out / name
        path.write_bytes(content)
        written.append(path)
    return written
