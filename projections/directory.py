"""Establishment directory: establishments and their practitioners, searchable
by specialty and city."""

from collections.abc import Mapping
from typing import Any

from projections.base import Op
from projections.common import DIRECTORY_KINDS, directory_ddl, directory_ops


class DirectoryProjection:
    name = "directory"
    tables: tuple[str, ...] = ("establishments", "practitioners")

    handles = DIRECTORY_KINDS

    def ddl(self, t: Mapping[str, str]) -> list[str]:
        return [
            *directory_ddl(t),
            f"CREATE INDEX ON {t['practitioners']} (specialty, city)",
            f"CREATE INDEX ON {t['practitioners']} (establishment_id)",
        ]

    def apply(self, event: Any, t: Mapping[str, str]) -> list[Op]:
        return directory_ops(event, t)
