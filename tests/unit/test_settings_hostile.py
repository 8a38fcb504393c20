"""Hostile settings: every bad file or value is refused in one line naming it, never a
traceback or a hang, and no refusal or `carnet config` line shows a secret."""

import os
import threading
from pathlib import Path

import pytest

from infra.settings import MAX_FILE_BYTES, load, masked_url, shown


def _file(tmp_path: Path, content: bytes | str) -> Path:
    path = tmp_path / "carnet.toml"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _refused(env: dict[str, str], config_file: Path | str | None = None) -> str:
    with pytest.raises(SystemExit) as refused:
        load(env, config_file=config_file)
    message = str(refused.value)
    assert message.startswith("invalid setting: ") and "\n" not in message, message
    return message


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ('http_host = "a\\u0000b"\n', "http_host in"),  # a NUL, escaped in TOML
        ('database_name = "x\\u0007"\n', "database_name in"),
        ('stream = "CARNET\\n"\n', "stream in"),  # `$` of the old pattern let it through
        ('data_dir = "/var/lib/\\u001b[31m"\n', "data_dir in"),
        ("rate_per_second = inf\n", "rate_per_second in"),
        ("rate_per_second = 1e400\n", "rate_per_second in"),  # TOML reads it as inf
        ("enumeration_window = nan\n", "enumeration_window in"),
        ("http_port = 99999999999999999999999999\n", "http_port in"),
        ('http_port = "8080"\n', "http_port in"),  # TOML has integers: a string is a mistake
        ("http_port = 8080.0\n", "http_port in"),
        ("suspend_on_enumeration = 1\n", "suspend_on_enumeration in"),
        ("http_host = { a = 1 }\n", "http_host in"),
        ("[http_port]\nvalue = 1\n", "http_port in"),
        ('http_host = ["a", "b"]\n', "http_host in"),
        ("http_host = 1979-05-27\n", "http_host in"),
        ("data_dir = 1979-05-27\n", "data_dir in"),  # was a NotImplementedError traceback
        ("data_dir = 5\n", "data_dir in"),
        ("pool_min = 10\npool_max = 5\n", "pool_min in"),  # asyncpg's ValueError at start
        ('database_name = "carnet\\"; DROP DATABASE postgres; --"\n', "database_name in"),
    ],
)
def test_a_hostile_value_in_the_file_is_refused_naming_its_key(tmp_path, content, named):
    path = _file(tmp_path, content)
    message = _refused({}, path)
    assert f"{named} {path}" in message


def test_the_cross_checks_name_where_each_value_came_from(tmp_path):
    path = _file(tmp_path, "request_timeout = 1\n")
    message = _refused({"CARNET_DATABASE_TIMEOUT": "1"}, path)
    assert message.endswith(f"CARNET_DATABASE_TIMEOUT must be less than request_timeout in {path}")
    assert "CARNET_REQUEST_TIMEOUT" not in message


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b'http_host = "\xff\xfe"\n', "is not UTF-8"),  # was a UnicodeDecodeError traceback
        (b"# \xc3\n", "is not UTF-8"),
        (b'stream = "A\x00B"\n', "is not TOML"),  # a raw NUL
        (b"http_port = = 1\n", "is not TOML"),
    ],
)
def test_a_file_that_is_not_toml_text_is_refused_naming_it(tmp_path, content, says):
    path = _file(tmp_path, content)
    assert f"{path} {says}" in _refused({}, path)


def test_a_byte_order_mark_or_an_empty_file_is_fine(tmp_path):
    assert (
        load({}, config_file=_file(tmp_path, b"\xef\xbb\xbfhttp_port = 9000\n")).settings.http_port
        == 9000
    )
    assert load({}, config_file=_file(tmp_path, b"")).settings.http_port == 8080


def test_a_huge_file_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / "huge.toml"
    with path.open("wb") as f:
        f.write(b'http_host = "')
        f.truncate(100 * 1024 * 1024)  # 100 MB (sparse)
    assert f"larger than {MAX_FILE_BYTES} bytes" in _refused({}, path)


def test_what_is_not_a_regular_readable_file_is_refused_at_once(tmp_path):
    assert "not a regular file" in _refused({}, tmp_path)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    outcome: list[str] = []
    reader = threading.Thread(target=lambda: outcome.append(_refused({}, fifo)), daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # it waits for a writer forever: unblock it, then fail
        with fifo.open("wb"):
            pass
        pytest.fail("reading the settings from a FIFO hangs")
    assert "not a regular file" in outcome[0]
    loop = tmp_path / "loop.toml"
    loop.symlink_to(tmp_path / "loop2.toml")
    (tmp_path / "loop2.toml").symlink_to(loop)
    assert f"cannot read {loop}" in _refused({}, loop)
    assert "NUL" in _refused({"CARNET_CONFIG": "carnet\x00.toml"})
    assert "cannot read" in _refused({}, "/dev/zero")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file without read permission")
def test_a_file_without_read_permission_is_refused(tmp_path):
    path = _file(tmp_path, "http_port = 9000\n")
    path.chmod(0)
    assert "Permission denied" in _refused({}, path)


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("CARNET_HTTP_PORT", " 9000 ", 9000),
        ("CARNET_HTTP_PORT", "9000\n", 9000),
        ("CARNET_HTTP_PORT", "+9000", 9000),
        ("CARNET_RATE_PER_SECOND", "1e3", 1000.0),
        ("CARNET_RATE_PER_SECOND", " 2.5", 2.5),
        *(("CARNET_SUSPEND_ON_ENUMERATION", t, True) for t in ("true", "True", "yes", "ON", "1")),
        *(("CARNET_SUSPEND_ON_ENUMERATION", t, False) for t in ("false", "NO", "off", "0 ")),
    ],
)
def test_environment_values_read_as_their_type(name, text, value):
    settings = load({name: text}).settings
    assert getattr(settings, name.removeprefix("CARNET_").lower()) == value


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("CARNET_HTTP_PORT", "0x10"),
        ("CARNET_HTTP_PORT", "1e3"),  # was read as 1000
        ("CARNET_HTTP_PORT", "80.0"),  # was read as 80
        ("CARNET_HTTP_PORT", "-1"),
        ("CARNET_HTTP_PORT", "1_000"),
        ("CARNET_HTTP_PORT", "٣"),
        ("CARNET_HTTP_PORT", "9" * 5000),
        ("CARNET_METRICS_PORT", "65536"),
        ("CARNET_RATE_PER_SECOND", "inf"),  # was accepted: a limit that never limits
        ("CARNET_RATE_PER_SECOND", "Infinity"),
        ("CARNET_RATE_PER_SECOND", "nan"),
        ("CARNET_RATE_PER_SECOND", "1e400"),
        ("CARNET_ENUMERATION_WINDOW", "inf"),
        ("CARNET_REQUEST_TIMEOUT", "0x10"),
        ("CARNET_SUSPEND_ON_ENUMERATION", "maybe"),
        ("CARNET_SUSPEND_ON_ENUMERATION", ""),
        ("CARNET_STREAM", "CARNET\n"),  # was accepted: `$` matches before a final newline
        ("CARNET_HTTP_HOST", "127.0.0.1\x1b[2J"),
        ("CARNET_DATA_DIR", "/tmp/\x07"),
        ("CARNET_DATABASE_NAME", 'x"; DROP DATABASE postgres; --'),  # quoted into CREATE DATABASE
        ("CARNET_DATABASE_NAME", "n" * 64),
        ("CARNET_POOL_MIN", "50"),  # above the default pool_max
    ],
)
def test_a_hostile_environment_value_is_refused_naming_its_variable(name, text):
    message = _refused({name: text})
    assert name in message
    assert "\x1b" not in message and "\x07" not in message


SECRET = "S3kr1t"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://carnet:{SECRET}/x@db:5432/carnet",  # a reserved character unencoded
        f"postgresql://carnet:{SECRET}#x@db:5432/carnet",
        f"postgresql://carnet:{SECRET}?x@db:5432/carnet",
        f"postgresql://carnet:x/{SECRET}@db:5432/carnet",  # asyncpg's error echoed this
        f"postgresql://carnet:{SECRET}@db:port/carnet",
        f"postgresql://carnet:{SECRET}@[::1/carnet",
        f"mysql://carnet:{SECRET}@db/carnet",
        f"carnet:{SECRET}@db",
        f"host=db user=carnet password={SECRET}",
    ],
)
def test_a_bad_database_url_is_refused_without_repeating_it(url):
    message = _refused({"CARNET_DATABASE_URL": url})
    assert "CARNET_DATABASE_URL" in message
    assert SECRET not in message
    assert SECRET not in shown("database_url", url)


@pytest.mark.parametrize(
    "url",
    [
        f"http://ops:{SECRET}@nats:4222",
        f"nats://ops:{SECRET}@nats:4222,https://nats2:4222",
        f"nats://ops:{SECRET}/x@nats:4222",
        f"nats://{SECRET}@nats:port",
    ],
)
def test_a_bad_nats_url_is_refused_without_repeating_it(url):
    message = _refused({"CARNET_NATS_URL": url})
    assert "CARNET_NATS_URL" in message and SECRET not in message
    assert SECRET not in shown("nats_url", url)


@pytest.mark.parametrize(
    ("name", "url", "shown_as"),
    [
        (
            "database_url",
            "postgresql://carnet:p%40ss%3Aw%2Frd%25%23@db:5432/carnet",
            "postgresql://carnet:***@db:5432/carnet",
        ),
        (
            "database_url",
            f"postgresql://carnet@db/carnet?PassWord={SECRET}&sslmode=require&password={SECRET}",
            "postgresql://carnet@db/carnet?PassWord=***&sslmode=require&password=***",
        ),
        (
            "database_url",
            f"postgresql://carnet@db/carnet?sslpassword={SECRET}",
            "postgresql://carnet@db/carnet?sslpassword=***",
        ),
        (
            "database_url",
            f"postgresql://carnet@db/carnet?pass%77ord={SECRET}",
            "postgresql://carnet@db/carnet?password=***",
        ),
        (
            "database_url",
            f"postgresql:///carnet?host=/run/postgresql&password={SECRET}",
            "postgresql:///carnet?host=/run/postgresql&password=***",  # `//` was dropped
        ),
        (  # a colon needs no encoding in a password: the first one ends the user name
            "database_url",
            f"postgresql://carnet:{SECRET}:x@db:5432/carnet",
            "postgresql://carnet:***@db:5432/carnet",
        ),
        (
            "database_url",
            f"postgresql://carnet:{SECRET}@h1:5432,h2:5433/carnet",
            "postgresql://carnet:***@h1:5432,h2:5433/carnet",
        ),
        ("nats_url", f"tls://ops:{SECRET}@nats:4222", "tls://ops:***@nats:4222"),
        ("nats_url", f"nats://{SECRET}@nats:4222", "nats://***@nats:4222"),
        (
            "nats_url",
            f"nats://a:{SECRET}@n1:4222,nats://{SECRET}@n2:4222, tls://b:{SECRET}@n3:4222",
            "nats://a:***@n1:4222,nats://***@n2:4222, tls://b:***@n3:4222",
        ),
        ("nats_url", f"nats://n1:4222?token={SECRET}", "nats://n1:4222?token=***"),
    ],
)
def test_credentials_are_masked_however_they_are_spelled(name, url, shown_as):
    assert masked_url(url) == shown_as
    settings = load({f"CARNET_{name.upper()}": url}).settings  # a valid URL: accepted
    assert shown(name, getattr(settings, name)) == shown_as
    assert SECRET not in shown_as


def test_a_port_parameter_that_is_not_a_number_is_refused():
    message = _refused({"CARNET_DATABASE_URL": "postgresql://carnet@db/carnet?port=5432x"})
    assert "CARNET_DATABASE_URL has" not in message and "CARNET_DATABASE_URL: has a port" in message


def test_an_empty_url_variable_is_as_if_unset():
    settings = load({"CARNET_DATABASE_URL": "", "CARNET_NATS_URL": ""}).settings
    assert (settings.database_url, settings.nats_url) == (None, None)
