"""STATE_STORE=rocksdb: the worker's tables in RocksDB files that outlive the process, for state larger than
RAM and restarts that read only the changelog written after the files.

Faust's RocksDB store keeps one database per changelog partition and picks it from the event being
processed. The tables here are written in bulk and from timers, with no event in hand, and each knows
the partition of any key (`KeyPartitionedTable.partition_for`): this store asks the table instead.

**The files are never ahead of the changelog.** Exactness after a crash rests on the state being its
changelog (docs/reliability.md): a row written to RocksDB before its changelog record is acknowledged would
survive a kill -9 that its record did not. So a row goes to memory first (`unacked`, read before the files),
and into its partition's database only when the broker has acknowledged the changelog batch that carries
it, in one RocksDB write batch with that batch's last offset (`acknowledged`). The files hold the changelog
up to the offset they record, exactly; a restart reads each changelog from there on (Faust's persisted
offset). Local files that claim more than the changelog has (the topics were recreated) are removed at
start (`claim_state_dir`).
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from faust.stores.rocksdb import RocksDBOptions
from faust.stores.rocksdb import Store as FaustRocksDBStore
from faust.types import TP

log = logging.getLogger(__name__)
LOCK_FILE = ".worker.lock"
OFFSET_KEY = FaustRocksDBStore.offset_key
WRITE_BUFFER_BYTES = 16 * 1024 * 1024  # per database (Faust's default: 64 MiB, three of them)
TOMBSTONE_RETENTION_S = 86_400.0  # Kafka's default delete.retention.ms, which the changelogs keep
_shared_caches: dict[int, Any] = {}


class StateDirInUse(RuntimeError):
    pass


class SharedCacheOptions(RocksDBOptions):
    """Every database of the worker shares one block cache of ROCKSDB_CACHE_MB (Faust gives each its own 2 GiB)."""

    def as_options(self) -> Any:
        import rocksdict

        options = super().as_options()
        factory = rocksdict.BlockBasedOptions()
        factory.set_bloom_filter(self.bloom_filter_size, block_based=True)
        factory.set_block_cache(shared_cache(self.block_cache_size))
        factory.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(factory)
        return options


def shared_cache(size: int) -> Any:
    import rocksdict

    if size not in _shared_caches:
        _shared_caches[size] = rocksdict.Cache(size)
    return _shared_caches[size]


class KeyPartitionedRocksDBStore(FaustRocksDBStore):
    """One RocksDB database per partition, the partition of a key being the table's; rows written and not yet
    acknowledged on the changelog wait in memory (`None`: a deletion)."""

    def __init__(self, *args: Any, cache_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, driver="rocksdict", **kwargs)
        self.rocksdb_options = SharedCacheOptions(
            block_cache_size=cache_bytes, write_buffer_size=WRITE_BUFFER_BYTES, max_write_buffer_number=2,
            use_rocksdict=True,
        )
        self.unacked: dict[int, dict[bytes, bytes | None]] = {}
        self.acked_offsets: dict[int, int] = {}  # partition -> the last changelog offset written to its database

    def _partition(self, key: bytes) -> int:
        return self.table.partition_for(self._decode_key(key))

    def _get(self, key: bytes) -> bytes | None:
        partition = self._partition(key)
        waiting = self.unacked.get(partition)
        if waiting is not None and key in waiting:
            return waiting[key]
        return self._db_for_partition(partition).get(key)

    def _set(self, key: bytes, value: bytes | None) -> None:
        self.unacked.setdefault(self._partition(key), {})[key] = value

    def _del(self, key: bytes) -> None:
        self.unacked.setdefault(self._partition(key), {})[key] = None

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None

    def acknowledged(self, partition: int, records: Iterable[tuple[bytes, bytes | None]], last_offset: int) -> None:
        """The broker has these changelog records of `partition` up to `last_offset`: into the database, with
        the offset, in one write. A partition given away meanwhile is left alone: its database stays at its
        last offset, and whoever owns it next reads the changelog from there."""
        import rocksdict

        db = self._dbs.get(partition)
        if db is None or last_offset <= self.acked_offsets.get(partition, -1):
            return  # given away, or older than what is written (the client completes a partition's batches in order)
        self.acked_offsets[partition] = last_offset
        batch = rocksdict.WriteBatch(raw_mode=True)
        waiting = self.unacked.get(partition, {})
        for key, value in records:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
            if key in waiting and waiting[key] == value:  # not written again since
                del waiting[key]
        batch.put(OFFSET_KEY, str(last_offset).encode())
        db.write(batch)

    def discard(self, partition: int, records: Iterable[tuple[bytes, bytes | None]]) -> None:
        """These records of `partition` will never be written (the zombie fence dropped them): their rows go back
        to what the database holds, unless written again since."""
        waiting = self.unacked.get(partition, {})
        for key, value in records:
            if key in waiting and waiting[key] == value:
                del waiting[key]

    def apply_changelog_batch(self, batch: Iterable[Any], to_key: Any, to_value: Any) -> None:
        """Recovery: the records read from the changelog, each partition's with its last offset in one write
        (Faust writes the rows and the offset apart)."""
        import rocksdict

        writes: dict[int, Any] = {}
        last: dict[int, int] = {}
        for event in batch:
            message = event.message
            write = writes.get(message.partition) or writes.setdefault(message.partition,
                                                                        rocksdict.WriteBatch(raw_mode=True))
            if message.value is None:
                write.delete(message.key)
            else:
                write.put(message.key, message.value)
            last[message.partition] = max(message.offset, last.get(message.partition, -1))
        for partition, write in writes.items():
            write.put(OFFSET_KEY, str(last[partition]).encode())
            self._db_for_partition(partition).write(write)

    def revoke_partitions(self, table: Any, tps: set[Any]) -> None:
        for tp in tps:
            if tp.topic in table.changelog_topic.topics:
                self.unacked.pop(tp.partition, None)
                self.acked_offsets.pop(tp.partition, None)
        super().revoke_partitions(table, tps)

    def _visible_items_of(self, partition: int, db: Any) -> Iterator[tuple[bytes, bytes]]:
        waiting = self.unacked.get(partition, {})
        for key, value in self._visible_items(db):
            if key not in waiting:
                yield key, value
        yield from ((key, value) for key, value in list(waiting.items()) if value is not None)

    def _active_partitions(self) -> list[tuple[int, Any]]:
        actives = self.app.assignor.assigned_actives()
        topic = self.table.changelog_topic_name  # type: ignore[attr-defined]
        return [(p, db) for p, db in list(self._dbs.items()) if TP(topic, p) in actives or self.table.is_global]

    def _iteritems(self) -> Iterator[tuple[bytes, bytes]]:
        for partition, db in self._active_partitions():
            yield from self._visible_items_of(partition, db)

    def _iterkeys(self) -> Iterator[bytes]:
        for key, _ in self._iteritems():
            yield key

    def _itervalues(self) -> Iterator[bytes]:
        for _, value in self._iteritems():
            yield value

    def _size(self) -> int:
        return sum(1 for _ in self._iterkeys())


def claim_state_dir(
    tabledir: Path, changelog_ends: Mapping[tuple[str, int], int], max_age_s: float = TOMBSTONE_RETENTION_S
) -> IO[str]:
    """Lock the table directory for this process (the lock lasts while the returned file is open) and keep
    the databases that can resume from their changelog; the others go, and their partitions are read again:
    - one whose recorded offset is at or past the end of its changelog partition (`changelog_ends`: (table
      name, partition) -> end offset) holds rows of topics since recreated;
    - one not written for `max_age_s` may have missed deletions that compaction has since dropped from the
      changelog (Kafka keeps a tombstone for `delete.retention.ms`, a day by default).
    Two workers on one directory would write each other's files: the second is refused."""
    try:
        import rocksdict  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("STATE_STORE=rocksdb needs rocksdict: pip install '.[rocksdb]'") from exc
    tabledir.mkdir(parents=True, exist_ok=True)
    lock = (tabledir / LOCK_FILE).open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        message = f"{tabledir} is used by another running worker: give each worker its own STATE_DIR"
        raise StateDirInUse(message) from None
    now = time.time()
    for path in sorted(tabledir.glob("*-*.db")):
        table, _, partition = path.name.removesuffix(".db").rpartition("-")
        end = changelog_ends.get((table, int(partition))) if partition.isdigit() else None
        age_s = now - max((entry.stat().st_mtime for entry in path.iterdir()), default=0.0)  # before opening it
        recorded = recorded_offset(path)
        if recorded is None:  # nothing acknowledged was ever written to it (or it cannot be read)
            shutil.rmtree(path)
        elif end is None or recorded >= end or age_s > max_age_s:
            log.warning("state: %s (changelog offset %s of %s, written %.0fs ago) cannot resume: removed, read again",
                        path.name, recorded, end, age_s)
            shutil.rmtree(path)
    return lock


def recorded_offset(path: Path) -> int | None:
    """The changelog offset a database says it holds up to; None when it cannot be read."""
    import rocksdict

    try:
        db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True),
                             access_type=rocksdict.AccessType.read_only())
    except Exception:  # noqa: BLE001 - a damaged or foreign directory: read the changelog instead
        return None
    try:
        value = db.get(OFFSET_KEY)
        return None if value is None else int(value)
    finally:
        db.close()
