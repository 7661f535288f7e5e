"""STATE_STORE=rocksdb (`streams.kafka.rocksdb_store`): rows written with no Faust event in hand (bulk writes,
timers) go to the database of their key's partition, and every start begins from empty files. No broker:
the tables are only built and written here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from faust.types import TP

from streams.config import Settings
from streams.kafka.rocksdb_store import LOCK_FILE, KeyPartitionedRocksDBStore, StateDirInUse, claim_empty_state_dir
from streams.serving.store import MemoryStore
from streams.stages.app import build
from streams.stages.topology import Wiring

PARTITIONS = 4
ROW = [[[1763800000000, "c", "google_ads", "brand", None, "c1"]], [123], [[1024, 1763800000000]], [], 1763800000000]
KEYS = [f"visitor-{n}" for n in range(40)]


@pytest.fixture
def wiring(tmp_path: Path) -> Iterator[Wiring]:
    settings = Settings.from_env({"STATE_STORE": "rocksdb", "STATE_DIR": str(tmp_path),
                                  "TOPIC_PARTITIONS": str(PARTITIONS)})
    yield build(settings, "127.0.0.1:1", MemoryStore())


def test_every_table_of_a_rocksdb_worker_uses_the_key_partitioned_store(wiring: Wiring) -> None:
    tables = [wiring.journeys, wiring.partials, wiring.channel_windows, wiring.signal_keys]
    assert all(isinstance(table.data, KeyPartitionedRocksDBStore) for table in tables)


def test_rows_put_in_bulk_land_in_the_database_of_their_key_s_partition(wiring: Wiring) -> None:
    table = wiring.journeys
    table.put_rows(dict.fromkeys(KEYS, ROW))
    store = table.data
    for key in KEYS:
        assert store[key] == ROW and key in store
        encoded = store._encode_key(key)
        holding = [p for p in range(PARTITIONS) if store._db_for_partition(p).get(encoded) is not None]
        assert holding == [table.partition_for(key)]
    assert {table.partition_for(key) for key in KEYS} == set(range(PARTITIONS))  # the keys spread over all four


def test_a_row_put_as_none_is_deleted(wiring: Wiring) -> None:
    table = wiring.journeys
    table.put_rows({"v1": ROW, "v2": ROW})
    table.put_rows({"v1": None})
    assert "v1" not in table.data and table.data.get("v1") is None
    assert table.data["v2"] == ROW


def test_recovery_always_reads_the_changelog_from_its_start(wiring: Wiring) -> None:
    store = wiring.journeys.data
    changelog = [TP(wiring.journeys.changelog_topic.get_topic_name(), p) for p in range(PARTITIONS)]
    store.set_persisted_offset(changelog[0], 1234)  # what Faust calls after a changelog record is acknowledged
    assert [store.persisted_offset(tp) for tp in changelog] == [None] * PARTITIONS


def test_a_claimed_state_dir_is_emptied_and_a_second_claim_is_refused(tmp_path: Path) -> None:
    tables = tmp_path / "v1" / "tables"
    (tables / "journeys-0.db").mkdir(parents=True)
    (tables / "journeys-0.db" / "000001.sst").write_bytes(b"rows of an earlier run")
    (tables / "stray-file").write_text("x")
    lock = claim_empty_state_dir(tables)
    try:
        assert [entry.name for entry in tables.iterdir()] == [LOCK_FILE]
        with pytest.raises(StateDirInUse, match="give each worker its own STATE_DIR"):
            claim_empty_state_dir(tables)
    finally:
        lock.close()
    claim_empty_state_dir(tables).close()  # free again once the first worker is gone
