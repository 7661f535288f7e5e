"""STATE_STORE=rocksdb: the worker's tables in RocksDB files, for state larger than RAM.

Faust's RocksDB store keeps one database per changelog partition and picks it from the event being
processed. The tables here are written in bulk and from timers, with no event in hand, and each knows
the partition of any key (`KeyPartitionedTable.partition_for`): this store asks the table instead.

The files start empty at every start and recovery fills them from the changelogs, as it fills the memory
store. RocksDB keeps a write the moment it is made, before its changelog record is acknowledged and the
input offsets that made it are committed; a worker killed in between would restart with rows its changelog
never had, and exactness after a crash rests on the state being its changelog (docs/reliability.md). So
the store keeps no persisted offsets: RocksDB here is for state larger than RAM, not a faster restart.
"""

from __future__ import annotations

import fcntl
import shutil
from pathlib import Path
from typing import IO, Any

from faust.stores.rocksdb import Store as FaustRocksDBStore

LOCK_FILE = ".worker.lock"


class StateDirInUse(RuntimeError):
    pass


class KeyPartitionedRocksDBStore(FaustRocksDBStore):
    """One RocksDB database per partition, the partition of a key being the table's."""

    def _partition(self, key: bytes) -> int:
        return self.table.partition_for(self._decode_key(key))

    def _get(self, key: bytes) -> bytes | None:
        return self._db_for_partition(self._partition(key)).get(key)

    def _set(self, key: bytes, value: bytes | None) -> None:
        self._db_for_partition(self._partition(key)).put(key, value)

    def _del(self, key: bytes) -> None:
        self._db_for_partition(self._partition(key)).delete(key)

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None

    def persisted_offset(self, tp: Any) -> int | None:
        return None  # recovery reads each changelog from its start (see the module's docstring)

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        return None


def claim_empty_state_dir(tabledir: Path) -> IO[str]:
    """Lock the table directory for this process and empty it; the lock lasts while the returned file is
    open. Two workers on one directory would empty each other's files: the second one is refused."""
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
    for entry in tabledir.iterdir():
        if entry.name != LOCK_FILE:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    return lock
