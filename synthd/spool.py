"""The spool: find input files, wait until they settle, claim them atomically.

Layout of ``spool/<job>/``::

    NAME.txt | NAME.jsonl      dropped by producers (".*", "*.tmp", "*.part" ignored)
    .work/<claim>-NAME         claimed by a daemon, being processed
    done/NAME                  finished; every item has its outcome in out/
    failed/NAME + NAME.error.json   refused, with the reason

A claim is one ``rename`` into ``.work/`` under a name no other claim uses,
so two daemons sharing a spool can never take the same file: the loser's
rename fails with ``FileNotFoundError``. Blocking file-system calls; the daemon
runs them in a thread.
"""

from __future__ import annotations

import codecs
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from synthd.errors import InputError

WORK = ".work"
DONE = "done"
FAILED = "failed"
_IGNORED_SUFFIXES = (".tmp", ".part", ".error.json")
_RESERVED = frozenset({WORK, DONE, FAILED})
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


@dataclass(frozen=True, slots=True)
class Entry:
    """What a scan saw of one name in a job's spool folder."""

    name: str
    size: int
    mtime_ns: int
    refused: str | None = None  # why it can never be read: symlink, fifo, directory


def ensure_layout(job_dir: Path) -> None:
    for sub in (WORK, DONE, FAILED):
        (job_dir / sub).mkdir(parents=True, exist_ok=True)


def scan(job_dir: Path) -> list[Entry]:
    """The candidate names in a job's folder, oldest first. Follows no links."""
    entries = []
    with os.scandir(job_dir) as it:
        for e in it:
            if e.name.startswith(".") or e.name.endswith(_IGNORED_SUFFIXES):
                continue
            if e.name in _RESERVED and e.is_dir(follow_symlinks=False):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # taken or deleted since the listing: nothing to do
            entries.append(Entry(e.name, st.st_size, st.st_mtime_ns, _refusal(st.st_mode)))
    entries.sort(key=lambda en: (en.mtime_ns, en.name))
    return entries


def _refusal(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "symlink: links are not followed, nothing outside the spool is read"
    if stat.S_ISDIR(mode):
        return "directory where a file was expected"
    if stat.S_ISFIFO(mode):
        return "FIFO: only regular files are read"
    return "not a regular file"


class Settler:
    """Decides when a file has stopped changing and may be claimed.

    A file is settled once two scans saw the same size and mtime and its mtime
    is at least ``settle_s`` old. Pure: the caller passes the time.
    """

    def __init__(self, settle_s: float) -> None:
        self.settle_ns = int(settle_s * 1e9)
        self._seen: dict[str, tuple[int, int]] = {}

    def settled(self, entries: list[Entry], now_ns: int) -> list[Entry]:
        ready = []
        seen: dict[str, tuple[int, int]] = {}
        for e in entries:
            sig = (e.size, e.mtime_ns)
            old_enough = now_ns - e.mtime_ns >= self.settle_ns
            if (
                e.refused is not None
                or (old_enough and self._seen.get(e.name) == sig)
                or (old_enough and self.settle_ns == 0)
            ):
                ready.append(e)
            else:
                seen[e.name] = sig
        self._seen = seen
        return ready


def new_claim_id() -> str:
    return secrets.token_hex(4)


def claim(job_dir: Path, name: str, claim_id: str) -> Path | None:
    """Move ``name`` into ``.work/``. None if another daemon took it first."""
    target = job_dir / WORK / f"{claim_id}-{name}"
    try:
        os.rename(job_dir / name, target)
    except FileNotFoundError:
        return None
    return target


def transcode_if_bom(path: Path) -> str | None:
    """Rewrite a UTF-16/32 file with a BOM as UTF-8 in place; return the codec."""
    with open(path, "rb") as f:
        head = f.read(4)
    codec = next((c for bom, c in _BOMS if head.startswith(bom)), None)
    if codec is None:
        return None
    tmp = path.with_name(path.name + ".utf8.part")
    try:
        with (
            open(path, encoding=codec, newline="") as src,
            open(tmp, "w", encoding="utf-8") as dst,
        ):
            while chunk := src.read(1 << 16):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
    except UnicodeError as e:
        tmp.unlink(missing_ok=True)
        detail = f"starts with a {codec} BOM but is not valid {codec}: {e}"
        raise InputError("bad_encoding", detail) from e
    os.replace(tmp, path)
    return codec


def fail(job_dir: Path, current: Path, name: str, reason: str, detail: str) -> Path:
    """Move a refused file to ``failed/`` with ``NAME.error.json`` beside it."""
    target = _move_unique(current, job_dir / FAILED, name)
    _write_report(target, name, reason, detail)
    return target


def fail_missing(job_dir: Path, name: str, reason: str, detail: str) -> Path:
    """Report a claimed file that is gone: ``failed/NAME.error.json`` with no file beside it."""
    folder = job_dir / FAILED
    folder.mkdir(parents=True, exist_ok=True)
    target, n = folder / name, 1
    while target.exists() or target.is_symlink() or _report_path(target).exists():
        n += 1
        target = folder / f"{name}.{n}"
    _write_report(target, name, reason, detail)
    return target


def _report_path(target: Path) -> Path:
    return target.with_name(target.name + ".error.json")


def _write_report(target: Path, name: str, reason: str, detail: str) -> None:
    report = {"file": name, "reason": reason, "detail": detail, "failed_at": time.time()}
    err = _report_path(target)
    tmp = err.with_name(err.name + ".part")
    tmp.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    os.replace(tmp, err)


class ClaimWatch:
    """Notices a claimed file deleted, replaced or resized while it is read.

    Through its open descriptor a reader goes on reading a deleted or replaced
    file to its old end, and a truncated file just ends early: without this
    check such a file would be finished as if it were whole. ``check`` raises
    ``InputError("changed_while_read")``; it costs two stat calls, made at most
    every ``every_s`` seconds of the caller's clock (always when ``now`` is None).
    """

    def __init__(self, fd: int, path: str, every_s: float = 0.5) -> None:
        st = os.fstat(fd)
        self._fd = fd
        self._path = path
        self._ident = (st.st_dev, st.st_ino)
        self._size = st.st_size
        self._every_s = every_s
        self._next: float | None = None

    def check(self, now: float | None = None) -> None:
        if now is not None:
            if self._next is not None and now < self._next:
                return
            self._next = now + self._every_s
        st = os.fstat(self._fd)
        try:
            named = os.stat(self._path)
        except FileNotFoundError:
            named = None
        if named is not None and (named.st_dev, named.st_ino) != self._ident:
            problem = "was replaced by another file"
        elif named is None or st.st_nlink == 0:
            problem = "was deleted"
        elif st.st_size != self._size:
            problem = (
                f"changed size from {self._size} to {st.st_size} bytes (was it still being "
                "written? see [service] settle_s)"
            )
        else:
            return
        raise InputError(
            "changed_while_read",
            f"the claimed file {problem} while it was read; the items read until then were "
            "processed, the rest were not",
        )


def unique_target(folder: Path, name: str) -> Path:
    """``folder/name``, or ``name.2``, ``name.3``... if taken: nothing is overwritten."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    n = 1
    while target.exists() or target.is_symlink():
        n += 1
        target = folder / f"{name}.{n}"
    return target


def _move_unique(src: Path, folder: Path, name: str) -> Path:
    target = unique_target(folder, name)
    os.rename(src, target)
    return target
