"""rosbag2 writing and robust reading without a ROS installation (rosbags + rclpy serialization).

`BagWriter` serializes rclpy messages with `rclpy.serialization.serialize_message` and stores the raw CDR with
`rosbags.rosbag2.Writer` (MCAP by default, sqlite3 on request) with the ROS 2 Kilted type definitions and
hashes; it writes into a hidden staging directory and renames it only on success, so a failed conversion
leaves no complete-looking bag. `BagReader` yields (topic, msgtype, stamp_ns, raw bytes) and survives damaged
bags: it falls back to a sequential scan of the MCAP records (or a plain SQL query for sqlite3) when the bag
has no metadata.yaml or no MCAP summary, replays what is readable and says in `stopped` where and why it
stopped. (A truncated sqlite3 file is usually unreadable as a whole: sqlite reports it malformed.)
"""

from __future__ import annotations

import mmap
import os
import shutil
import sqlite3
import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rosbags.interfaces import Nodetype
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
DISTRO_STORE = Stores.ROS2_KILTED
BAG_VERSION = 9


def msgtype_of(msg: Any) -> str:
    """ROS type name `pkg/msg/Name` of an rclpy message instance or class."""
    cls = msg if isinstance(msg, type) else type(msg)
    pkg = cls.__module__.split(".")[0]
    return f"{pkg}/msg/{cls.__name__}"


def _msg_search_dirs() -> list[Path]:
    """share/ folders that may hold .msg definitions of packages rosbags does not know (surg3d_msgs)."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    return [Path(p) / "share" for p in prefixes] + [Path(__file__).resolve().parents[2]]


def typestore_for(msgtypes: Iterable[str], store: Typestore | None = None) -> Typestore:
    """The Kilted typestore, extended with any of `msgtypes` it lacks from their installed .msg files."""
    store = store or get_typestore(DISTRO_STORE)
    pending = [t for t in msgtypes if t not in store.fielddefs]
    while pending:
        name = pending.pop()
        if name in store.fielddefs:
            continue
        pkg, _, short = name.split("/")
        for base in _msg_search_dirs():
            path = base / pkg / "msg" / f"{short}.msg"
            if path.is_file():
                store.register(get_types_from_msg(path.read_text(), name))
                break
        else:
            raise KeyError(f"no message definition for {name}: not in the {DISTRO_STORE.value} typestore "
                           f"and no {pkg}/msg/{short}.msg under AMENT_PREFIX_PATH or {sys.prefix}/share")
        # nested custom types referenced by the new definition
        pending += [t for t in _nested_types(store, name) if t not in store.fielddefs]
    return store


def _nested_types(store: Typestore, name: str) -> list[str]:
    """Message types used by the fields of `name` (directly or as array/sequence elements)."""
    out = []
    for _, (kind, det) in store.fielddefs[name][1]:
        if kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
            kind, det = det[0]
        if kind == Nodetype.NAME:
            out.append(det)
    return out


_STAGE_MARK = ".partial-"  # a bag being written is `.<name>.partial-<writer pid>/<name>` beside its final path
_RECOVERY_MARK = ".recovering-"  # and one `recover_unclosed` is rewriting from a dead writer's staged copy


class BagWriter:
    """Write a rosbag2 directory; use as a context manager (an exception discards the staged bag).

    write(topic, msg, stamp_ns) takes rclpy messages; write_raw takes CDR bytes and the type name. `stage_mark`
    names the staging directory's kind (`recover_unclosed` stages its rewrites apart from writers' bags).
    """

    def __init__(self, out: str | os.PathLike, storage: str = "mcap", overwrite: bool = False,
                 stage_mark: str = _STAGE_MARK) -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise FileExistsError(f"output bag {self.out} already exists (choose a new path or overwrite)")
        self._stage_root = self.out.parent / f".{self.out.name}{stage_mark}{os.getpid()}"
        if self._stage_root.exists():
            shutil.rmtree(self._stage_root)
        self._stage_root.mkdir(parents=True)
        self.storage = storage
        self.overwrite = overwrite
        self._writer = Writer(self._stage_root / self.out.name, version=BAG_VERSION,
                              storage_plugin=STORAGES[storage])
        self._writer.open()
        self._store = get_typestore(DISTRO_STORE)
        self._conns: dict[str, Any] = {}
        self.count = 0
        self.bytes = 0

    def _connection(self, topic: str, msgtype: str) -> Any:
        conn = self._conns.get(topic)
        if conn is None:
            typestore_for([msgtype], self._store)
            conn = self._writer.add_connection(topic, msgtype, typestore=self._store)
            self._conns[topic] = conn
        elif conn.msgtype != msgtype:
            raise ValueError(f"topic {topic} already carries {conn.msgtype}, cannot also write {msgtype}")
        return conn

    def write_raw(self, topic: str, msgtype: str, stamp_ns: int, data: bytes) -> None:
        """Append serialized CDR `data` of type `msgtype` on `topic` at receive time `stamp_ns`."""
        self._writer.write(self._connection(topic, msgtype), int(stamp_ns), data)
        self.count += 1
        self.bytes += len(data)

    def write(self, topic: str, msg: Any, stamp_ns: int) -> None:
        """Serialize an rclpy message and append it."""
        from rclpy.serialization import serialize_message

        self.write_raw(topic, msgtype_of(msg), stamp_ns, serialize_message(msg))

    def flush(self) -> None:
        """Put every message written so far into the staged file, so that a crash of this process loses none of
        them (`recover_unclosed` finds them there): the MCAP writer's pending chunk is closed (rosbags closes one
        only at 1 MiB, which a recorder of small messages fills in minutes), sqlite3's transaction committed.
        rosbags has no public call for it: its storage writer's own (tests/test_data_convert.py catches a change)."""
        storage = self._writer.storage
        if hasattr(storage, "close_chunk"):
            if storage.chunk.bio.tell():
                storage.close_chunk()
            storage.bio.flush()
        else:
            storage.conn.commit()

    def close(self) -> Path:
        """Finish the bag (metadata.yaml) and move it to its final path."""
        self._writer.close()
        if self.out.exists():
            shutil.rmtree(self.out) if self.out.is_dir() else self.out.unlink()
        os.replace(self._stage_root / self.out.name, self.out)
        self._stage_root.rmdir()
        return self.out

    def abort(self) -> None:
        """Discard everything written so far."""
        try:
            self._writer.close()
        except Exception:  # the staged files are deleted right below anyway
            pass
        shutil.rmtree(self._stage_root, ignore_errors=True)

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass
class BagMessage:
    """One stored message: topic, type name (pkg/msg/Name), receive stamp (ns) and raw CDR bytes."""

    topic: str
    msgtype: str
    stamp_ns: int
    data: bytes


_MCAP_MAGIC = b"\x89MCAP0\r\n"
_OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK, _OP_FOOTER, _OP_DATA_END = 0x03, 0x04, 0x05, 0x06, 0x02, 0x0F


class _CorruptError(Exception):
    pass


def _string(buf: bytes | memoryview, off: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", buf, off)
    if off + 4 + n > len(buf):
        raise _CorruptError("string runs past its record")
    return bytes(buf[off + 4:off + 4 + n]).decode(), off + 4 + n


def _decompress(data: bytes, compression: str, size: int) -> bytes:
    """Chunk records of an MCAP chunk; `size` is the uncompressed size the chunk header promises."""
    if compression == "":
        out = data
    elif compression == "zstd":
        try:
            from compression import zstd
        except ImportError:
            from backports import zstd
        out = zstd.decompress(data)
    elif compression == "lz4":
        from lz4.frame import decompress
        out = decompress(data)
    else:
        raise _CorruptError(f"unknown chunk compression {compression!r}")
    if len(out) != size:
        raise _CorruptError(f"chunk holds {len(out)} bytes, its header says {size}")
    return out


class BagReader:
    """Messages of a rosbag2 directory, .mcap or .db3 file in storage order, tolerant of damage.

    Iterate `messages()`; afterwards `count` says how many were read and `stopped` is None for a complete
    read or a sentence naming the file, position and reason where reading stopped.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"bag {self.path} does not exist")
        self.count = 0
        self.stopped: str | None = None
        self.topics: dict[str, str] = {}
        self.message_count: int | None = None
        self.files = self._storage_files()
        self._probe()

    def _probe(self) -> None:
        """Topics and message count from the metadata, when the bag has readable metadata."""
        if not (self.path.is_dir() and (self.path / "metadata.yaml").is_file()):
            return
        try:
            with Reader(self.path) as reader:
                self.topics = {c.topic: c.msgtype for c in reader.connections}
                self.message_count = reader.message_count
        except Exception:  # damaged: messages() falls back to scanning and finds the topics as it goes
            self.topics, self.message_count = {}, None

    def _storage_files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        files = sorted(p for p in self.path.iterdir() if p.suffix in (".mcap", ".db3"))
        if not files:
            raise FileNotFoundError(f"bag {self.path}: no .mcap or .db3 file inside")
        return files

    def messages(self) -> Iterator[BagMessage]:
        """Yield every readable message; see `stopped` afterwards."""
        self.count, self.stopped = 0, None
        if self.path.is_dir() and (self.path / "metadata.yaml").is_file():
            try:
                reader = Reader(self.path)
                reader.open()
            except Exception as e:
                reason = f"{type(e).__name__}: {e}"
            else:
                yield from self._rosbags(reader)
                return
        else:
            reason = "no metadata.yaml (bag not closed?)"
        # Damaged or unclosed bag: scan its storage files directly.
        for f in self.files:
            scan = self._scan_mcap(f) if f.suffix == ".mcap" else self._scan_sqlite(f)
            for m in scan:
                self.count += 1
                yield m
            if self.stopped:
                self.stopped += f" (the standard reader had failed: {reason})"
                return

    def _rosbags(self, reader: Reader) -> Iterator[BagMessage]:
        self.topics = {c.topic: c.msgtype for c in reader.connections}
        self.message_count = reader.message_count
        last = None
        try:
            for conn, stamp, data in reader.messages():
                last = stamp
                self.count += 1
                yield BagMessage(conn.topic, conn.msgtype, int(stamp), bytes(data))
        except Exception as e:
            self.stopped = (f"{self.path}: stopped after {self.count} of {self.message_count} messages "
                            f"(last stamp {last}): {type(e).__name__}: {e}")
        finally:
            reader.close()

    def _scan_mcap(self, path: Path) -> Iterator[BagMessage]:
        with open(path, "rb") as fh:
            if path.stat().st_size < 8 or fh.read(8) != _MCAP_MAGIC:
                self.stopped = f"{path}: not an MCAP file (bad magic)"
                return
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:   # no copy of a large bag
                yield from self._scan_mcap_data(path, data)

    def _scan_mcap_data(self, path: Path, data: mmap.mmap) -> Iterator[BagMessage]:
        schemas: dict[int, str] = {}
        channels: dict[int, tuple[str, str]] = {}
        off = 8
        try:
            while True:
                if off + 9 > len(data):
                    raise _CorruptError("file ends inside a record header (truncated)")
                op, length = struct.unpack_from("<BQ", data, off)
                body_start, body_end = off + 9, off + 9 + length
                if body_end > len(data):
                    raise _CorruptError(f"record 0x{op:02x} of {length} bytes runs past the end (truncated)")
                body = memoryview(data)[body_start:body_end]
                if op in (_OP_FOOTER, _OP_DATA_END):
                    return
                if op == _OP_CHUNK:
                    (usize,) = struct.unpack_from("<Q", body, 16)
                    comp, p = _string(body, 28)
                    (clen,) = struct.unpack_from("<Q", body, p)
                    inner = _decompress(bytes(body[p + 8:p + 8 + clen]), comp, usize)
                    yield from self._mcap_records(memoryview(inner), schemas, channels)
                else:
                    yield from self._mcap_records(memoryview(data)[off:body_end], schemas, channels)
                off = body_end
        except (_CorruptError, struct.error, UnicodeDecodeError, ValueError, RuntimeError) as e:
            self.stopped = (f"{path}: stopped at byte {off} of {len(data)} after {self.count} messages: {e}")

    def _mcap_records(self, buf: memoryview, schemas: dict[int, str],
                      channels: dict[int, tuple[str, str]]) -> Iterator[BagMessage]:
        off = 0
        while off < len(buf):
            op, length = struct.unpack_from("<BQ", buf, off)
            body = buf[off + 9:off + 9 + length]
            if len(body) != length:
                raise _CorruptError("record runs past its chunk")
            if op == _OP_SCHEMA:
                (sid,) = struct.unpack_from("<H", body, 0)
                schemas[sid], _ = _string(body, 2)
            elif op == _OP_CHANNEL:
                cid, sid = struct.unpack_from("<HH", body, 0)
                topic, _ = _string(body, 4)
                channels[cid] = (topic, schemas.get(sid, ""))
                self.topics[topic] = channels[cid][1]
            elif op == _OP_MESSAGE:
                cid, _seq, log_time, _pub = struct.unpack_from("<HIQQ", body, 0)
                if cid not in channels:
                    raise _CorruptError(f"message on unknown channel {cid}")
                topic, msgtype = channels[cid]
                yield BagMessage(topic, msgtype, int(log_time), bytes(body[22:]))
            off += 9 + length

    def _scan_sqlite(self, path: Path) -> Iterator[BagMessage]:
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        except sqlite3.Error as e:
            self.stopped = f"{path}: cannot open sqlite3 storage: {e}"
            return
        try:
            ids = {i: (name, typ) for i, name, typ in con.execute("SELECT id, name, type FROM topics")}
            self.topics = dict(ids.values())
            # rowid order (= write order) streams pages front to back, so a damaged tail still yields the rest
            for topic_id, stamp, blob in con.execute("SELECT topic_id, timestamp, data FROM messages"):
                topic, msgtype = ids[topic_id]
                yield BagMessage(topic, msgtype, int(stamp), bytes(blob))
        except sqlite3.Error as e:
            self.stopped = f"{path}: stopped after {self.count} messages: sqlite3 error: {e}"
        finally:
            con.close()


@dataclass
class Recovered:
    """A bag that a writer left unclosed, rewritten as a closed bag: where, how many messages, and where reading
    the damaged copy stopped (None when it was read to its end)."""

    path: Path
    count: int
    stopped: str | None


def bag_path_taken(out: str | os.PathLike) -> bool:
    """True when `out` exists or a bag for it is being written or was left unclosed (staged under its name)."""
    out = Path(out)
    return out.exists() or any(out.parent.glob(f".{out.name}{_STAGE_MARK}*"))


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs; a zombie (killed, not yet reaped by its orphaned parent's reaper) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def recover_unclosed(folder: str | os.PathLike, storage: str = "mcap") -> list[Recovered]:
    """Close the bags in `folder` whose writer process ended without closing them (a crash, a kill): every message
    still readable in the staged copy (`BagReader`'s scan; an MCAP writer loses at most its unwritten chunk) is
    written to the bag's own path, then the staged copy is removed. Staged bags of live processes are left alone,
    and so is one whose final path already exists. A recovery cut short (its process ended before the rewritten
    bag was in place) left its own partial copy beside the staged one it read, which is still there: the partial
    copy is removed and the staged one recovered again (taken for a writer's, the partial copy would have made the
    bag, and the full one been left aside)."""
    for stage in Path(folder).glob(f".*{_RECOVERY_MARK}*"):
        pid = stage.name.rpartition(_RECOVERY_MARK)[2]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(stage)
    recovered = []
    for stage in sorted(Path(folder).glob(f".*{_STAGE_MARK}*")):
        name, _, pid = stage.name[1:].rpartition(_STAGE_MARK)
        staged, out = stage / name, stage.parent / name
        if not (pid.isdigit() and staged.is_dir()) or process_alive(int(pid)) or out.exists():
            continue
        reader = BagReader(staged)
        with BagWriter(out, storage=storage, stage_mark=_RECOVERY_MARK) as writer:
            for m in reader.messages():
                writer.write_raw(m.topic, m.msgtype, m.stamp_ns, m.data)
        shutil.rmtree(stage)
        recovered.append(Recovered(out, reader.count, reader.stopped))
    return recovered
