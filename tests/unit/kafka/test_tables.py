"""The journeys table's bulk changelog writes (`KeyPartitionedTable.put_rows`) must be what Faust itself
writes for a key and row, or a restarted worker's recovery cannot read them back (found by the kill -9
tests: keys sent raw where Faust's recovery decodes JSON). No broker: the records are only queued here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from streams.config import Settings
from streams.core.events import Touch
from streams.core.journeys import Journey, Retention
from streams.serving.store import open_store
from streams.stages.app import build
from streams.stages.topology import Wiring

KEYS = ["bv123", "12345-abc", "ünïcode visitor", "\x00spend/google_ads/7", '"quoted"']
JOURNEY = Journey()
JOURNEY.admit(Touch("c", "c1", 1763800000000, "bv", "google_ads", "brand", None, 0.0), 1024, Retention.of(Settings()))
# the journeys table holds packed bytes; the other tables JSON rows (claims here: any key goes to its partition)
ROWS = {"journeys": JOURNEY.to_row(), "claims": ["holder", 1763800000000]}


@pytest.fixture(params=sorted(ROWS))
def table_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def wiring() -> Iterator[Wiring]:
    yield build(Settings.from_env({"TOPIC_PARTITIONS": "4"}), "127.0.0.1:1", open_store(None))


def table_of(wiring: Wiring, name: str) -> Any:
    return {"journeys": wiring.journeys, "claims": wiring.claims_table}[name]


def queued(table: Any) -> dict[int, list[tuple[bytes, bytes | None]]]:
    out, table.unsent = table.unsent, {}
    return out


def test_bulk_records_are_encoded_as_faust_encodes_the_table_s_own(wiring: Wiring, table_name: str) -> None:
    table, ROW = table_of(wiring, table_name), ROWS[table_name]
    topic = table.changelog_topic
    table.put_rows(dict.fromkeys(KEYS, ROW))
    records = queued(table)
    for key in KEYS:
        key_bytes, _ = topic.prepare_key(key, table.key_serializer, topic.schema, {})
        value_bytes, _ = topic.prepare_value(ROW, table.value_serializer, topic.schema, {})
        assert (key_bytes, value_bytes) in records[table.partition_for(key)]


def test_bulk_records_decode_to_the_key_and_row_on_recovery(wiring: Wiring, table_name: str) -> None:
    table, ROW = table_of(wiring, table_name), ROWS[table_name]
    serializers = wiring.app.serializers
    table.put_rows(dict.fromkeys(KEYS, ROW))
    decoded: dict[Any, Any] = {}
    for records in queued(table).values():
        for key_bytes, value_bytes in records:
            key = serializers.loads_key(str, key_bytes, serializer=table.key_serializer)
            decoded[key] = serializers.loads_value(None, value_bytes, serializer=table.value_serializer)
    assert decoded == dict.fromkeys(KEYS, ROW)


def test_a_key_goes_to_its_partition_in_the_order_put_and_none_is_a_tombstone(wiring: Wiring, table_name: str) -> None:
    table, ROW = table_of(wiring, table_name), ROWS[table_name]
    table.put_rows({"v1": ROW})
    table.put_rows({"v1": None, "v2": ROW})
    assert "v1" not in table.data and table.data["v2"] == ROW
    records = queued(table)
    v1 = [value for key, value in records[table.partition_for("v1")] if key == b'"v1"']
    assert v1 == [table.changelog_topic.prepare_value(ROW, table.value_serializer, None, {})[0], None]


def test_a_row_is_read_from_the_store_as_the_table_reads_it(wiring: Wiring, table_name: str) -> None:
    table, ROW = table_of(wiring, table_name), ROWS[table_name]
    table.put_rows(dict.fromkeys(KEYS, ROW))
    queued(table)
    assert [table.row(key) for key in KEYS] == [table.get(key) for key in KEYS] == [ROW] * len(KEYS)
    assert table.row("never written") is None is table.get("never written")
    table.put_rows({KEYS[0]: None})
    queued(table)
    assert table.row(KEYS[0]) is None


def test_changelog_records_read_in_bulk_give_the_rows_faust_s_recovery_gives(wiring: Wiring, table_name: str) -> None:
    """`apply_changelog_records` (the bulk read of a memory store's recovery) decodes what Faust's own
    recovery decodes, applies a partition's records in order (a tombstone deletes, a later row wins) and
    remembers each key's partition as Faust's memory store does, so that a revoked partition's rows go."""
    table, ROW = table_of(wiring, table_name), ROWS[table_name]
    assert table.reads_changelog_in_bulk()
    table.put_rows(dict.fromkeys(KEYS, ROW))
    table.put_rows({KEYS[0]: None, KEYS[1]: None})
    table.put_rows({KEYS[1]: ROW})
    records = queued(table)
    serializers = wiring.app.serializers
    expected: dict[Any, Any] = {}
    for partition_records in records.values():
        for key_bytes, value_bytes in partition_records:
            key = serializers.loads_key(str, key_bytes, serializer=table.key_serializer)
            if value_bytes is None:
                expected.pop(key, None)
            else:
                expected[key] = serializers.loads_value(None, value_bytes, serializer=table.value_serializer)
    table.data.data.clear()
    table.data._key_partition.clear()
    for partition, partition_records in records.items():
        table.apply_changelog_records(partition, partition_records)
    assert dict(table.data.data) == expected == {key: ROW for key in KEYS if key != KEYS[0]}
    assert table.data._key_partition == {key: table.partition_for(key) for key in expected}
    table.data.data.clear()
    table.data._key_partition.clear()


def test_a_record_without_a_key_is_skipped_and_a_tombstone_of_an_unknown_key_is_harmless(
    wiring: Wiring, table_name: str
) -> None:
    table = table_of(wiring, table_name)
    table.apply_changelog_records(0, [(None, b"x"), (b'"nobody"', None)])
    assert table.row("nobody") is None and not table.data.data
