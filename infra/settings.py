"""Settings: read once, from a TOML file and the environment, into one typed struct.

Each setting `name` comes from, in this order of precedence: the environment
variable `CARNET_NAME`, the key `name` of the TOML file named by `--config`
or `CARNET_CONFIG`, its default. `carnet config` prints where each came from.
"""

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import msgspec

CONFIG_VARIABLE = "CARNET_CONFIG"


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
    # Where the worker processes (`carnet project`, `carnet relay`) serve
    # /metrics; port 0: they serve none. The HTTP server serves its own.
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0

    def __post_init__(self) -> None:
        # A read-your-writes wait gets what the request timeout leaves after one
        # database timeout (infra/bootstrap.py), so that must be something.
        if self.database_timeout >= self.request_timeout:
            raise ValueError("CARNET_DATABASE_TIMEOUT must be less than CARNET_REQUEST_TIMEOUT")


# Settings whose values may hold credentials: `carnet config` masks them.
SECRET = frozenset({"database_url", "nats_url"})
FIELDS: tuple[str, ...] = Settings.__struct_fields__


def variable(name: str) -> str:
    return f"CARNET_{name.upper()}"


class Loaded(msgspec.Struct, frozen=True):
    """The settings, and where each value came from: "default", "file" or "env"."""

    settings: Settings
    sources: dict[str, str]
    config_file: Path | None


def load(environ: dict[str, str] | None = None, config_file: Path | str | None = None) -> Loaded:
    """Read the file (if any) and the environment; fail loudly naming the bad setting.

    `config_file` wins over `CARNET_CONFIG`. A bad value is named as its
    variable (`CARNET_HTTP_PORT`) or its key in the file (`http_port in
    /etc/carnet.toml`), whichever it came from.
    """
    env = os.environ if environ is None else environ
    path = Path(config_file) if config_file else None
    if path is None and env.get(CONFIG_VARIABLE):
        path = Path(env[CONFIG_VARIABLE])
    raw: dict[str, Any] = {}
    sources = dict.fromkeys(FIELDS, "default")
    if path is not None:
        for key, value in _read_file(path).items():
            raw[key] = value
            sources[key] = "file"
    for name in FIELDS:
        if variable(name) in env:
            raw[name] = env[variable(name)]
            sources[name] = "env"

    def where(name: str) -> str:
        return variable(name) if sources.get(name) != "file" else f"{name} in {path}"

    try:
        settings = msgspec.convert(raw, Settings, strict=False, dec_hook=_decode)
    except msgspec.ValidationError as e:
        # Name the variable or the key, not msgspec's path to the field.
        message = re.sub(r"\$\.(\w+)", lambda m: where(m.group(1)), str(e))
        raise SystemExit(f"invalid setting: {message}") from None
    return Loaded(settings, sources, path)


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Fail loudly at startup on a malformed value, naming the variable."""
    return load(environ).settings


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise SystemExit(f"invalid setting: cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise SystemExit(f"invalid setting: {path} is not TOML: {e}") from None
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise SystemExit(
            f"invalid setting: unknown key {names} in {path} (known keys: {', '.join(FIELDS)})"
        )
    return data


def _decode(cls: type, value: object) -> object:
    if cls is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(cls)


MASK = "***"


def masked_url(url: str) -> str:
    """The URL with its credentials hidden: a password (in the authority or a
    `password=` parameter), and a lone user name when it may be a token
    (`nats://TOKEN@host`); a PostgreSQL user name without password stays."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return MASK
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else None
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        if colon:
            userinfo = f"{user}:{MASK}"
        elif not parts.scheme.startswith("postgres"):
            userinfo = MASK
    netloc = host if userinfo is None else f"{userinfo}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in ("password", "token", "pass") for k, _ in pairs):
            query = urlencode(
                [(k, MASK if k.lower() in ("password", "token", "pass") else v) for k, v in pairs],
                quote_via=quote,
                safe="/*",
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def shown(name: str, value: object) -> str:
    """A setting's value as `carnet config` prints it: secrets masked."""
    if value is None:
        return "(unset)"
    if name in SECRET:
        return masked_url(str(value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
