"""Fields disclosed, said as the data categories a breach notification names.

A field no category claims falls under "other", so nothing disclosed is ever
left out of the list; the category's `fields` then say exactly what it was.
"""

from collections.abc import Iterable

# name -> (label, fields): in the order a report lists them.
CATEGORIES: dict[str, tuple[str, frozenset[str]]] = {
    "identity": (
        "identity (name, birth date, sex, patient id)",
        frozenset({"patient_id", "patient_name", "first_name", "last_name", "birth_date", "sex"}),
    ),
    "contact": ("contact details (email, phone)", frozenset({"email", "phone"})),
    "appointment": (
        "appointment details (date and time, motive, status, history)",
        frozenset(
            {
                "start",
                "end",
                "motive_id",
                "motive_name",
                "status",
                "source",
                "replaces",
                "replaced_by",
                "cancellation_reason",
            }
        ),
    ),
    "care-provider": (
        "practitioner and establishment (name, specialty, address)",
        frozenset(
            {
                "practitioner_id",
                "practitioner_name",
                "specialty",
                "establishment_id",
                "establishment_name",
                "address",
                "city",
            }
        ),
    ),
    "consent": ("consent to bookings by an establishment", frozenset({"consent"})),
    "access-history": (
        "access history (who saw the patient's data)",
        frozenset({"at", "actor", "action", "resource_type", "outcome", "fields", "identified"}),
    ),
    "identifier": ("record identifiers", frozenset({"id"})),
}
OTHER = "other"
LABELS = {name: label for name, (label, _) in CATEGORIES.items()} | {OTHER: "other fields"}
_OF = {f: name for name, (_, fields) in CATEGORIES.items() for f in fields}
# What a notification must say was not exposed, when it was not.
STATEMENTS = {
    "identity": "no identity disclosed (pseudonymous data only)",
    "contact": "no contact details read",
    "appointment": "no appointment details read",
}


def category_of(field: str) -> str:
    return _OF.get(field, OTHER)


def categories_of(fields: Iterable[str]) -> list[str]:
    """The categories of these fields, in the report's order."""
    found = {category_of(f) for f in fields}
    return [c for c in [*CATEGORIES, OTHER] if c in found]


def not_disclosed(disclosed: Iterable[str]) -> list[str]:
    seen = set(disclosed)
    return [c for c in CATEGORIES if c not in seen]


def statements(disclosed: Iterable[str], modified: bool) -> list[str]:
    seen = set(disclosed)
    said = [text for name, text in STATEMENTS.items() if name not in seen]
    if not modified:
        said.append("nothing modified")
    return said
