"""STATE_STORE=rocksdb (`streams.kafka.rocksdb_store`): rows written with no Faust event in hand (bulk writes,
timers) go to the database of their key's partition, only once their changelog records are acknowledged and
with their offset, and a restart keeps the files that can resume from their changelog. No broker: the tables
are only built and written here, and acknowledgements are called as the delivery callbacks call them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from streams.config import Settings
from streams.core.events import Touch
from streams.core.journeys import Journey, Retention
from streams.kafka.rocksdb_store import (
    OFFSET_KEY,
    TOMBSTONE_RETENTION_S,
    KeyPartitionedRocksDBStore,
    StateDirInUse,
    claim_state_dir,
    recorded_offset,
)
from streams.serving.store import MemoryStore
from streams.stages.app import build
from streams.stages.topology import Wiring

PARTITIONS = 4
JOURNEY = Journey()
JOURNEY.admit(Touch("c", "c1", 1763800000000, "v", "google_ads", "brand", None, 0.0), 1024, Retention.of(Settings()))
ROW = JOURNEY.to_row()  # a packed journey row
KEYS = [f"visitor-{n}" for n in range(40)]


@pytest.fixture
def wiring(tmp_path: Path) -> Iterator[Wiring]:
    settings = Settings.from_env({"STATE_STORE": "rocksdb", "STATE_DIR": str(tmp_path),
                                  "TOPIC_PARTITIONS": str(PARTITIONS)})
    yield build(settings, "127.0.0.1:1", MemoryStore())


def test_every_table_of_a_rocksdb_worker_uses_the_key_partitioned_store(wiring: Wiring) -> None:
    tables = [wiring.journeys, wiring.partials, wiring.channel_windows, wiring.signal_keys]
    assert all(isinstance(table.data, KeyPartitionedRocksDBStore) for table in tables)


def acknowledge_all(table: Any) -> None:
    """What the delivery callbacks of `send_changes` do once the broker has the records: offsets from 100 on. The
    partitions' databases are open, as Faust opens those of the partitions assigned to the worker."""
    for partition, records in table.unsent.items():
        table.data._db_for_partition(partition)
        table.data.acknowledged(partition, records, table.data.acked_offsets.get(partition, 99) + len(records))
    table.unsent = {}


def in_files(store: Any, key: str) -> bytes | None:
    return store._db_for_partition(store.table.partition_for(key)).get(store._encode_key(key))


def test_rows_wait_in_memory_until_the_broker_has_their_changelog_records(wiring: Wiring) -> None:
    table = wiring.journeys
    table.put_rows(dict.fromkeys(KEYS, ROW))
    store = table.data
    assert all(store[key] == ROW for key in KEYS)
    assert all(in_files(store, key) is None for key in KEYS)  # a kill -9 now: the files hold none of them
    acknowledge_all(table)
    assert all(in_files(store, key) == ROW and store[key] == ROW for key in KEYS)
    assert store.unacked == {p: {} for p in range(PARTITIONS)}


def test_rows_land_in_the_database_of_their_key_s_partition_with_the_changelog_offset(wiring: Wiring) -> None:
    table = wiring.journeys
    table.put_rows(dict.fromkeys(KEYS, ROW))
    sent = {partition: len(records) for partition, records in table.unsent.items()}
    acknowledge_all(table)
    store = table.data
    for key in KEYS:
        encoded = store._encode_key(key)
        holding = [p for p in range(PARTITIONS) if store._db_for_partition(p).get(encoded) is not None]
        assert holding == [table.partition_for(key)]
    assert {table.partition_for(key) for key in KEYS} == set(range(PARTITIONS))  # the keys spread over all four
    changelog = table.changelog_topic.get_topic_name()
    assert {p: store.persisted_offset(TP(changelog, p)) for p in sent} == {p: 100 + n - 1 for p, n in sent.items()}


def test_a_row_written_again_before_the_earlier_record_is_acknowledged_keeps_its_newer_value(wiring: Wiring) -> None:
    table = wiring.journeys
    table.put_rows({"v1": ROW})
    first, table.unsent = table.unsent, {}
    newer = Journey.from_row(ROW)
    newer.last_ts += 1
    table.put_rows({"v1": newer.to_row()})
    for partition, records in first.items():
        table.data._db_for_partition(partition)
        table.data.acknowledged(partition, records, 7)
    assert in_files(table.data, "v1") == ROW and table.data["v1"] == newer.to_row()
    acknowledge_all(table)
    assert in_files(table.data, "v1") == newer.to_row()


def test_a_deletion_hides_the_row_at_once_and_leaves_the_files_when_acknowledged(wiring: Wiring) -> None:
    table = wiring.journeys
    table.put_rows({"v1": ROW, "v2": ROW})
    acknowledge_all(table)
    table.put_rows({"v1": None})
    assert "v1" not in table.data and table.data.get("v1") is None
    assert in_files(table.data, "v1") == ROW
    acknowledge_all(table)
    assert in_files(table.data, "v1") is None and table.data["v2"] == ROW


def test_the_table_s_rows_are_the_files_overlaid_with_what_waits_in_memory(wiring: Wiring) -> None:
    table = wiring.journeys
    changelog = table.changelog_topic.get_topic_name()
    wiring.app.assignor.assigned_actives = lambda: {TP(changelog, p) for p in range(PARTITIONS)}  # type: ignore
    for partition in range(PARTITIONS):  # assigned: Faust opens their databases
        table.data._db_for_partition(partition)
    table.put_rows({"old": ROW, "gone": ROW})
    acknowledge_all(table)
    table.put_rows({"gone": None, "new": ROW})
    assert sorted(table.data.keys()) == ["new", "old"] and len(table.data) == 2
    assert dict(table.data.items()) == {"new": ROW, "old": ROW}


def test_an_acknowledgement_for_a_partition_given_away_meanwhile_writes_nothing(wiring: Wiring) -> None:
    table = wiring.journeys
    table.put_rows({"v1": ROW})
    store, partition = table.data, table.partition_for("v1")
    records = table.unsent.pop(partition)
    store._db_for_partition(partition)
    store.revoke_partitions(table, {TP(table.changelog_topic.get_topic_name(), partition)})
    store.acknowledged(partition, records, 5)
    assert partition not in store._dbs and partition not in store.unacked


def make_db(tables: Path, name: str, offset: int | None) -> Path:
    import rocksdict

    path = tables / name
    db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
    db.put(b"row", b"value")
    if offset is not None:
        db.put(OFFSET_KEY, str(offset).encode())
    db.close()
    return path


def test_a_restart_keeps_the_files_that_can_resume_from_their_changelog(tmp_path: Path) -> None:
    tables = tmp_path / "v1" / "tables"
    tables.mkdir(parents=True)
    keeps = make_db(tables, "journeys-0.db", 41)
    recreated = make_db(tables, "journeys-1.db", 50)  # the changelog partition ends at 10 now
    unknown = make_db(tables, "old-table-0.db", 3)
    no_offset = make_db(tables, "partials-0.db", None)
    stale = make_db(tables, "partials-1.db", 2)
    old = time.time() - TOMBSTONE_RETENTION_S - 60
    for entry in stale.iterdir():
        os.utime(entry, (old, old))
    ends = {("journeys", 0): 42, ("journeys", 1): 10, ("partials", 0): 5, ("partials", 1): 5}
    lock = claim_state_dir(tables, ends)
    try:
        assert keeps.exists() and recorded_offset(keeps) == 41
        assert not any(path.exists() for path in (recreated, unknown, no_offset, stale))
        with pytest.raises(StateDirInUse, match="give each worker its own STATE_DIR"):
            claim_state_dir(tables, ends)
    finally:
        lock.close()
    claim_state_dir(tables, ends).close()  # free again once the first worker is gone


def test_recovery_writes_each_partition_s_records_with_their_last_offset(wiring: Wiring) -> None:
    table = wiring.journeys
    store = table.data
    key = store._encode_key
    p1, p2 = table.partition_for(KEYS[0]), table.partition_for(KEYS[1])
    records = [(p1, KEYS[0], ROW, 10), (p2, KEYS[1], ROW, 4), (p1, KEYS[0], None, 11)]
    batch = [SimpleNamespace(message=SimpleNamespace(partition=p, key=key(k), value=v, offset=o))
             for p, k, v, o in records]
    store.apply_changelog_batch(batch, to_key=None, to_value=None)
    assert in_files(store, KEYS[0]) is None and in_files(store, KEYS[1]) == ROW
    changelog = table.changelog_topic.get_topic_name()
    assert store.persisted_offset(TP(changelog, p1)) == 11 and store.persisted_offset(TP(changelog, p2)) == 4


def test_an_acknowledgement_older_than_what_is_written_changes_nothing(wiring: Wiring) -> None:
    table = wiring.journeys
    newer = Journey.from_row(ROW)
    newer.last_ts += 1
    store, partition = table.data, table.partition_for("v1")
    store._db_for_partition(partition)
    store.acknowledged(partition, [(store._encode_key("v1"), newer.to_row())], 9)
    store.acknowledged(partition, [(store._encode_key("v1"), ROW)], 8)
    assert in_files(store, "v1") == newer.to_row()
    assert store.persisted_offset(TP(table.changelog_topic.get_topic_name(), partition)) == 9
