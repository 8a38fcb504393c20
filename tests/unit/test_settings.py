"""Settings come from a TOML file and the environment; the environment wins."""

from pathlib import Path

import pytest

from infra.settings import FIELDS, Settings, load, load_settings, masked_url, shown


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "carnet.toml"
    path.write_text(text)
    return path


def test_without_file_or_variables_every_setting_is_its_default():
    loaded = load({})
    assert loaded.settings == Settings()
    assert set(loaded.sources.values()) == {"default"}
    assert loaded.config_file is None


def test_a_file_sets_values_and_the_environment_overrides_them(tmp_path):
    path = _toml(tmp_path, 'http_port = 9000\nstream = "FROMFILE"\ndata_dir = "/var/lib/carnet"\n')
    loaded = load({"CARNET_CONFIG": str(path), "CARNET_HTTP_PORT": "9100"})
    assert loaded.settings.http_port == 9100
    assert loaded.settings.stream == "FROMFILE"
    assert loaded.settings.data_dir == Path("/var/lib/carnet")
    assert loaded.sources["http_port"] == "env"
    assert loaded.sources["stream"] == "file"
    assert loaded.sources["pool_max"] == "default"
    assert loaded.config_file == path


def test_the_config_argument_wins_over_the_variable(tmp_path):
    named = _toml(tmp_path, "http_port = 9001\n")
    other = tmp_path / "other.toml"
    other.write_text("http_port = 9002\n")
    loaded = load({"CARNET_CONFIG": str(other)}, config_file=named)
    assert loaded.settings.http_port == 9001


def test_an_unknown_key_in_the_file_is_named(tmp_path):
    path = _toml(tmp_path, "http_port = 9000\nhttp_prot = 9001\n")
    with pytest.raises(SystemExit) as refused:
        load({}, config_file=path)
    assert "unknown key 'http_prot'" in str(refused.value)
    assert str(path) in str(refused.value)


def test_a_bad_value_in_the_file_names_the_key_and_the_file(tmp_path):
    path = _toml(tmp_path, 'http_port = "eighty"\n')
    with pytest.raises(SystemExit) as refused:
        load({}, config_file=path)
    assert f"http_port in {path}" in str(refused.value)
    assert "CARNET_HTTP_PORT" not in str(refused.value)


def test_a_bad_value_in_the_environment_names_the_variable(tmp_path):
    path = _toml(tmp_path, "http_port = 9000\n")
    with pytest.raises(SystemExit) as refused:
        load({"CARNET_HTTP_PORT": "99999"}, config_file=path)
    assert "CARNET_HTTP_PORT" in str(refused.value)
    with pytest.raises(SystemExit) as refused:
        load_settings({"CARNET_POOL_MAX": "many"})
    assert "CARNET_POOL_MAX" in str(refused.value)


def test_a_file_that_is_not_toml_or_missing_is_refused(tmp_path):
    broken = _toml(tmp_path, "http_port = = 1\n")
    with pytest.raises(SystemExit, match="is not TOML"):
        load({}, config_file=broken)
    with pytest.raises(SystemExit, match="cannot read"):
        load({}, config_file=tmp_path / "missing.toml")


def test_the_metrics_listener_of_worker_processes_is_off_by_default():
    settings = load({"CARNET_METRICS_PORT": "9464"}).settings
    assert (settings.metrics_host, settings.metrics_port) == ("127.0.0.1", 9464)
    assert Settings().metrics_port == 0
    with pytest.raises(SystemExit, match="CARNET_METRICS_PORT"):
        load({"CARNET_METRICS_PORT": "-1"})


@pytest.mark.parametrize(
    ("url", "shown_as"),
    [
        (
            "postgresql://carnet:s3cret@db.internal:5432/carnet",
            "postgresql://carnet:***@db.internal:5432/carnet",
        ),
        ("postgresql://carnet@db.internal/carnet", "postgresql://carnet@db.internal/carnet"),
        (
            "postgresql://carnet@db/carnet?password=s3cret&sslmode=require",
            "postgresql://carnet@db/carnet?password=***&sslmode=require",
        ),
        ("nats://user:s3cret@nats.internal:4222", "nats://user:***@nats.internal:4222"),
        ("nats://s3crettoken@nats.internal:4222", "nats://***@nats.internal:4222"),
        ("nats://nats.internal:4222", "nats://nats.internal:4222"),
    ],
)
def test_credentials_in_urls_are_masked(url, shown_as):
    assert masked_url(url) == shown_as
    assert "s3cret" not in shown("database_url", url)


def test_every_setting_is_shown_and_unset_urls_say_so():
    settings = Settings()
    for name in FIELDS:
        assert shown(name, getattr(settings, name))
    assert shown("database_url", None) == "(unset)"
    assert shown("suspend_on_enumeration", True) == "true"
