"""Settings: read once from the environment into one typed struct."""

import os
import re
from pathlib import Path
from typing import Annotated

import msgspec


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str | None = None  # None: start the embedded PostgreSQL
    nats_url: str | None = None  # None: start the embedded nats-server
    database_name: str = "carnet"
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    data_dir: Path = Path(".carnet")
    pool_min: Annotated[int, msgspec.Meta(ge=1, le=200)] = 2
    pool_max: Annotated[int, msgspec.Meta(ge=1, le=200)] = 20
    stream: Annotated[str, msgspec.Meta(pattern=r"^[A-Z][A-Z0-9_]{0,31}$")] = "CARNET"
    # Per-token rate limit, and the enumeration defence (infra/http/throttle.py).
    rate_per_second: Annotated[float, msgspec.Meta(gt=0)] = 50.0
    rate_burst: Annotated[int, msgspec.Meta(ge=1)] = 100
    enumeration_misses: Annotated[int, msgspec.Meta(ge=1)] = 20
    enumeration_window: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    suspend_on_enumeration: bool = True
    # Deadlines for a database that does not answer (docs/operations.md): every
    # request is answered within request_timeout, with 503 + Retry-After if
    # need be; a connection attempt and /readyz give up after database_timeout.
    request_timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 5.0
    database_timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 2.0

    def __post_init__(self) -> None:
        # A read-your-writes wait gets what the request timeout leaves after one
        # database timeout (infra/bootstrap.py), so that must be something.
        if self.database_timeout >= self.request_timeout:
            raise ValueError("CARNET_DATABASE_TIMEOUT must be less than CARNET_REQUEST_TIMEOUT")


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Fail loudly at startup on a malformed value, naming the variable."""
    env = os.environ if environ is None else environ
    raw = {
        field: env[f"CARNET_{field.upper()}"]
        for field in Settings.__struct_fields__
        if f"CARNET_{field.upper()}" in env
    }
    try:
        return msgspec.convert(raw, Settings, strict=False, dec_hook=_decode)
    except msgspec.ValidationError as e:
        # Name the variable, not msgspec's path to the field.
        message = re.sub(r"\$\.(\w+)", lambda m: f"CARNET_{m.group(1).upper()}", str(e))
        raise SystemExit(f"invalid setting: {message}") from None


def _decode(cls: type, value: object) -> object:
    if cls is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(cls)
