"""The scale-out settings: workers, the ledger's shards and anchors, stream replicas."""

import pytest

from infra.settings import Settings, load, shown


def test_the_defaults_are_one_worker_four_shards_a_minute_no_file_one_replica():
    settings = Settings()
    assert (settings.workers, settings.ledger_shards, settings.stream_replicas) == (1, 4, 1)
    assert settings.ledger_anchor_seconds == 60.0
    assert settings.ledger_anchor_file == ""
    assert shown("ledger_anchor_file", "") == "(none)"


def test_each_is_read_from_the_environment():
    loaded = load(
        {
            "CARNET_WORKERS": "4",
            "CARNET_LEDGER_SHARDS": "8",
            "CARNET_LEDGER_ANCHOR_SECONDS": "2.5",
            "CARNET_LEDGER_ANCHOR_FILE": "/var/lib/carnet/anchors.jsonl",
            "CARNET_STREAM_REPLICAS": "3",
        }
    )
    s = loaded.settings
    assert (s.workers, s.ledger_shards, s.ledger_anchor_seconds) == (4, 8, 2.5)
    assert (s.ledger_anchor_file, s.stream_replicas) == ("/var/lib/carnet/anchors.jsonl", 3)
    assert loaded.sources["workers"] == "env"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CARNET_WORKERS", "0"),
        ("CARNET_WORKERS", "65"),
        ("CARNET_WORKERS", "two"),
        ("CARNET_LEDGER_SHARDS", "0"),
        ("CARNET_LEDGER_SHARDS", "65"),
        ("CARNET_LEDGER_ANCHOR_SECONDS", "0"),
        ("CARNET_LEDGER_ANCHOR_SECONDS", "-1"),
        ("CARNET_LEDGER_ANCHOR_SECONDS", "nan"),
        ("CARNET_LEDGER_ANCHOR_FILE", "a\nb"),
        ("CARNET_STREAM_REPLICAS", "0"),
        ("CARNET_STREAM_REPLICAS", "6"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(variable, value):
    with pytest.raises(SystemExit) as refused:
        load({variable: value})
    assert variable in str(refused.value)
