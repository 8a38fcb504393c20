"""Settings: read once, from a TOML file and the environment, into one typed struct.

Each setting `name` comes from, in this order of precedence: the environment
variable `CARNET_NAME`, the key `name` of the TOML file named by `--config`
or `CARNET_CONFIG`, its default. `carnet config` prints where each came from.

A bad value is refused in one line naming the variable or the key and file
(never a traceback), and the refusal never repeats a secret setting's value.
The file's values must have the setting's TOML type (`http_port = 8080`, not
`"8080"`); an environment value is text, read as the setting's type: an
integer in decimal digits, a finite decimal number, a boolean as
true/false, yes/no, on/off or 1/0 (any case); surrounding spaces are ignored
for those. No value may hold a control character.
"""

import math
import os
import re
import stat
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import msgspec

CONFIG_VARIABLE = "CARNET_CONFIG"
# A settings file is a few hundred bytes; anything this big is a mistake (or /dev/zero).
MAX_FILE_BYTES = 1 << 20

Url = Annotated[str, msgspec.Meta(max_length=4096)]
Host = Annotated[str, msgspec.Meta(max_length=255)]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: Url | None = None  # None: start the embedded PostgreSQL
    nats_url: Url | None = None  # None: start the embedded nats-server
    # A PostgreSQL identifier (at most 63 bytes), created as given when missing.
    database_name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}\Z")] = (
        "carnet"
    )
    http_host: Host = "127.0.0.1"
    http_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    data_dir: Path = Path(".carnet")
    pool_min: Annotated[int, msgspec.Meta(ge=1, le=200)] = 2
    pool_max: Annotated[int, msgspec.Meta(ge=1, le=200)] = 20
    stream: Annotated[str, msgspec.Meta(pattern=r"^[A-Z][A-Z0-9_]{0,31}\Z")] = "CARNET"
    # Per-token rate limit, and the enumeration defence (infra/http/throttle.py).
    rate_per_second: Annotated[float, msgspec.Meta(gt=0, le=1e9)] = 50.0
    rate_burst: Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000)] = 100
    enumeration_misses: Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000)] = 20
    enumeration_window: Annotated[float, msgspec.Meta(gt=0, le=86400 * 366)] = 60.0
    suspend_on_enumeration: bool = True
    # Deadlines for a database that does not answer (docs/operations.md): every
    # request is answered within request_timeout, with 503 + Retry-After if
    # need be; a connection attempt and /readyz give up after database_timeout.
    request_timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 5.0
    database_timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 2.0
    # Where the worker processes (`carnet project`, `carnet relay`) serve
    # /metrics; port 0: they serve none. The HTTP server serves its own.
    metrics_host: Host = "127.0.0.1"
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    # HTTP worker processes of `carnet run` / `carnet serve` on one port
    # (SO_REUSEPORT), each with its own pool of pool_min..pool_max connections.
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # The access ledger's chains and its anchors (infra/ledger.py).
    ledger_shards: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    ledger_anchor_seconds: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 60.0
    ledger_anchor_file: Annotated[str, msgspec.Meta(max_length=4096)] = ""  # "": none
    # JetStream replicas of the stream the relay creates (1 on a single server).
    stream_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    # Crypto-shredding (infra/keyring.py, docs/operations.md): the key-encryption
    # key, base64 of 32 bytes, or a file that holds it ("": none; the demo
    # makes one in data_dir); during a rotation, the previous key too.
    kek: Annotated[str, msgspec.Meta(max_length=200)] = ""
    kek_file: Annotated[str, msgspec.Meta(max_length=4096)] = ""
    kek_previous: Annotated[str, msgspec.Meta(max_length=200)] = ""
    # The retention policy `carnet retention` applies (docs/operations.md): a
    # patient with nothing in the last N years (no appointment ending since,
    # registered before) is erased by shredding. 0: keep everything.
    retention_years: Annotated[int, msgspec.Meta(ge=0, le=200)] = 0

    def __post_init__(self) -> None:
        # A read-your-writes wait gets what the request timeout leaves after one
        # database timeout (infra/bootstrap.py), so that must be something.
        # (`load` checks this first, naming where each value came from.)
        if self.database_timeout >= self.request_timeout:
            raise ValueError("CARNET_DATABASE_TIMEOUT must be less than CARNET_REQUEST_TIMEOUT")
        if self.pool_min > self.pool_max:
            raise ValueError("CARNET_POOL_MIN must not exceed CARNET_POOL_MAX")


# Settings whose values may hold credentials: `carnet config` masks them, and
# no refusal repeats them.
URLS = frozenset({"database_url", "nats_url"})
SECRET = URLS | {"kek", "kek_previous"}
FIELDS: tuple[str, ...] = Settings.__struct_fields__
DEFAULTS = Settings()


def _base_type(annotation: Any) -> Any:
    """`int` for `Annotated[int, ...]`, `str` for `str | None`."""
    if typing.get_origin(annotation) is Annotated:
        return _base_type(typing.get_args(annotation)[0])
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args and type(None) in typing.get_args(annotation):
        return _base_type(args[0])
    return annotation


TYPES: dict[str, Any] = {f.name: _base_type(f.type) for f in msgspec.structs.fields(Settings)}
OPTIONAL = frozenset(
    f.name for f in msgspec.structs.fields(Settings) if type(None) in typing.get_args(f.type)
)


def variable(name: str) -> str:
    return f"CARNET_{name.upper()}"


class Loaded(msgspec.Struct, frozen=True):
    """The settings, and where each value came from: "default", "file" or "env"."""

    settings: Settings
    sources: dict[str, str]
    config_file: Path | None


def refuse(message: str) -> typing.NoReturn:
    raise SystemExit(f"invalid setting: {message}")


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

    def where(name: str) -> str:
        return variable(name) if sources.get(name) != "file" else f"{name} in {_inert(str(path))}"

    for name in FIELDS:
        if variable(name) in env:
            sources[name] = "env"
            raw[name] = _from_env(name, env[variable(name)], where(name))
    for name, value in raw.items():
        _check_value(name, value, where(name))
    _together(raw, where)
    try:
        settings = msgspec.convert(raw, Settings, strict=True, dec_hook=_decode)
    except msgspec.ValidationError as e:
        # Name the variable or the key, not msgspec's path to the field.
        message = re.sub(r"\$\.(\w+)", lambda m: where(m.group(1)), str(e))
        refuse(message)
    return Loaded(settings, sources, path)


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Fail loudly at startup on a malformed value, naming the variable."""
    return load(environ).settings


def _inert(text: str) -> str:
    """`text` with its unprintable characters escaped, so it prints as it is."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _shown_value(name: str, value: str) -> str:
    if name in SECRET:
        return "(value not shown: it may hold a secret)"
    shown_as = value if len(value) <= 40 else value[:40] + "…"
    return repr(_inert(shown_as))


_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BOOLEANS = {
    **dict.fromkeys(("true", "yes", "on", "1"), True),
    **dict.fromkeys(("false", "no", "off", "0"), False),
}


def _from_env(name: str, text: str, where: str) -> object:
    """An environment variable's text as the setting's type."""
    kind = TYPES[name]
    if kind is str or kind is Path:
        if name in OPTIONAL and text == "":
            return None  # set but empty: as if unset
        return text
    value = text.strip()
    if kind is bool:
        if value.lower() in _BOOLEANS:
            return _BOOLEANS[value.lower()]
        refuse(
            f"{where}: expected true or false (also yes/no, on/off, 1/0), "
            f"got {_shown_value(name, text)}"
        )
    if kind is int:
        if not _INTEGER.fullmatch(value) or len(value) > 20:
            refuse(
                f"{where}: expected an integer in decimal digits, got {_shown_value(name, text)}"
            )
        return int(value)
    if kind is float:
        number = float(value) if _DECIMAL.fullmatch(value) else math.nan
        if not math.isfinite(number):
            refuse(f"{where}: expected a finite decimal number, got {_shown_value(name, text)}")
        return number
    raise AssertionError(f"no reading of {kind} from the environment")  # pragma: no cover


def _check_value(name: str, value: object, where: str) -> None:
    """What the struct's types cannot say: no control character, a finite number, a URL."""
    if isinstance(value, str):
        if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
            refuse(f"{where}: holds a control character (a newline, a tab, a NUL…)")
        if name in URLS and value:
            problem = (postgres_url_problem if name == "database_url" else nats_url_problem)(value)
            if problem:
                refuse(f"{where}: {problem}")
    elif isinstance(value, float) and not math.isfinite(value):
        refuse(f"{where}: expected a finite number, got {value}")


def _read_file(path: Path) -> dict[str, Any]:
    shown_path = _inert(str(path))
    try:
        # Non-blocking, so that a FIFO refuses rather than waits for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        refuse(f"cannot read {shown_path}: {e.strerror}")
    except ValueError:  # a NUL in the name
        refuse(f"cannot read {shown_path}: a file name cannot hold a NUL")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            refuse(f"cannot read {shown_path}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        refuse(f"cannot read {shown_path}: {e.strerror}")
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        refuse(f"{shown_path} is larger than {MAX_FILE_BYTES} bytes: not a settings file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        refuse(f"{shown_path} is not UTF-8 text (byte {e.start})")
    try:
        # A byte-order mark, as some editors write, is not a TOML statement.
        document = tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as e:
        refuse(f"{shown_path} is not TOML: {e}")
    unknown = sorted(set(document) - set(FIELDS))
    if unknown:
        names = ", ".join(repr(_inert(k)) for k in unknown)
        refuse(f"unknown key {names} in {shown_path} (known keys: {', '.join(FIELDS)})")
    return document


def _decode(cls: type, value: object) -> object:
    if cls is Path and isinstance(value, str):
        return Path(value)
    if cls is Path:
        raise TypeError("Expected a path (a string)")
    raise NotImplementedError(cls)


def _together(raw: dict[str, Any], where: typing.Callable[[str], str]) -> None:
    """The checks of one setting against another, naming both as they were given."""

    def number(name: str) -> float | None:
        value = raw.get(name, getattr(DEFAULTS, name))
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else None  # a wrong type: the conversion names it

    for low, high, strictly in (
        ("database_timeout", "request_timeout", True),
        ("pool_min", "pool_max", False),
    ):
        a, b = number(low), number(high)
        if a is not None and b is not None and (a >= b if strictly else a > b):
            verb = "must be less than" if strictly else "must not exceed"
            refuse(f"{where(low)} {verb} {where(high)}")


# The schemes each driver connects with (asyncpg; nats-py).
POSTGRES_SCHEMES = ("postgresql", "postgres")
NATS_SCHEMES = ("nats", "tls", "ws", "wss")
_ENCODE = "percent-encode @ : / ? # % in a user name or password"


def _url_problem(url: str, schemes: tuple[str, ...]) -> str | None:
    """What is wrong with one URL, saying nothing of its value (it may hold a password)."""
    if "://" not in url:
        return f"is not a URL ({' or '.join(s + '://' for s in schemes)}…)"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a URL that parses (a bracket of an IPv6 address unclosed?)"
    if parts.scheme not in schemes:
        return f"has a scheme other than {' or '.join(s + '://' for s in schemes)}"
    if "@" in parts.path + parts.query + parts.fragment:
        return f"has an @ after its host: {_ENCODE}"
    return _port_problem(parts.netloc)


def _port_problem(netloc: str) -> str | None:
    """What is wrong with the ports of `host:port,host:port`, if anything."""
    for hostspec in netloc.rpartition("@")[2].split(","):
        # host, host:port, [v6] or [v6]:port; a port empty or in digits
        after_host = hostspec.rpartition("]")[2] if hostspec.startswith("[") else hostspec
        port = after_host.rpartition(":")[2] if ":" in after_host else ""
        if port and not (port.isascii() and port.isdigit()):
            return f"has a port that is not a number: {_ENCODE}"
        if port and not 0 < int(port) < 65536:
            return "has a port out of range"
    return None


def postgres_url_problem(url: str) -> str | None:
    problem = _url_problem(url, POSTGRES_SCHEMES)
    if problem is None:
        for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
            if key == "port" and not all(p.isascii() and p.isdigit() for p in value.split(",")):
                problem = "has a port parameter that is not a number"
    return problem


def nats_url_problem(url: str) -> str | None:
    """nats-py takes several servers: a comma-separated list of URLs."""
    for one in url.split(","):
        problem = _url_problem(one.strip(), NATS_SCHEMES)
        if problem:
            return problem
    return None


MASK = "***"
# Query parameters whose values may be credentials (any case).
_SECRET_PARAMETERS = ("pass", "token", "secret", "auth", "cred", "seed", "nkey", "jwt")


def masked_url(url: str) -> str:
    """The URL with its credentials hidden: a password (in the authority or a
    `password=` parameter), and a lone user name when it may be a token
    (`nats://TOKEN@host`); a PostgreSQL user name without password stays.

    A list of URLs (`nats://a,nats://b`) has each masked. Whatever cannot be
    told apart for sure (not a URL, a reserved character unencoded in a
    password) is masked whole.
    """
    if not url.lower().startswith(POSTGRES_SCHEMES):
        pieces: list[str] = []
        for piece in url.split(","):
            # A piece without a scheme belongs to the one before (a password's comma).
            if pieces and "://" not in piece:
                pieces[-1] += "," + piece
            else:
                pieces.append(piece)
        if len(pieces) > 1:
            return ",".join(_masked_one(p) for p in pieces)
    return _masked_one(url)


def _masked_one(url: str) -> str:
    lead = url[: len(url) - len(url.lstrip())]
    try:
        parts = urlsplit(url)
    except ValueError:
        return lead + MASK
    if "://" not in url or not parts.scheme:
        return lead + MASK
    head = f"{lead}{parts.scheme}://"
    if "@" in parts.path + parts.query + parts.fragment or _port_problem(parts.netloc):
        # A reserved character unencoded in a password (`u:pa/ss@h`, `u:pa#ss@h`,
        # `u:pa:ss@h`...): where the authority ends is anybody's guess.
        return head + MASK
    userinfo, at, host = parts.netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        if colon:
            userinfo = f"{user}:{MASK}"
        elif parts.scheme not in POSTGRES_SCHEMES:
            userinfo = MASK
    netloc = f"{userinfo}@{host}" if at else host
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret_parameter(k) for k, _ in pairs):
            query = urlencode(
                [(k, MASK if _secret_parameter(k) else v) for k, v in pairs],
                quote_via=quote,
                safe="/*",
            )
    return (
        head
        + netloc
        + parts.path
        + (f"?{query}" if query else "")
        + (f"#{MASK}" if parts.fragment else "")
    )


def _secret_parameter(key: str) -> bool:
    name = unquote(key).strip().lower()
    return any(word in name for word in _SECRET_PARAMETERS)


def shown(name: str, value: object) -> str:
    """A setting's value as `carnet config` prints it: secrets masked."""
    if value is None:
        return "(unset)"
    if name in URLS:
        return _inert(masked_url(str(value)))
    if name in SECRET:
        return "(set, not shown)" if value else "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return "(none)"
    return _inert(str(value))
