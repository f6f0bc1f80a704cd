"""The spool file's whole life: claimed, swept after a crash, done, or failed.

Layout of ``spool/<job>/``::

    NAME.txt | NAME.jsonl      dropped by producers (".*", "*.tmp", "*.part" ignored)
    .work/<claim>-NAME         claimed by a daemon, being processed
    done/NAME                  finished; every item has its outcome in out/
    failed/NAME + NAME.error.json   refused, with the reason

A claim is one ``rename`` into ``.work/`` under a name no other claim uses,
so two daemons sharing a spool can never take the same file: the loser's
rename fails with ``FileNotFoundError``. The checkpoint row comes first (a
crash before the rename leaves a row that start-up forgets), and each rename
the promise rests on is made durable with an fsync of both folders: a power
cut must not undo a claim, or a move to done/, whose records are kept.
Finding the files is ``synthd.scanner``'s. Blocking file-system calls; the
daemon runs them in a thread.
"""

from __future__ import annotations

import codecs
import os
import shutil
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson
import structlog

from synthd import crashpoints
from synthd.checkpoint import Checkpoint
from synthd.dirsync import fsync_dir, fsync_dirs
from synthd.errors import InputError
from synthd.models import Source

log = structlog.get_logger("synthd.spool")

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
        for d in it:
            if candidate_name(d) and (entry := entry_of(job_dir, d.name)) is not None:
                entries.append(entry)
    entries.sort(key=lambda en: (en.mtime_ns, en.name))
    return entries


def candidate_name(d: os.DirEntry[str]) -> bool:
    """Whether a listed name may be input (no stat: the type comes with the listing)."""
    name = d.name
    if name.startswith(".") or name.endswith(_IGNORED_SUFFIXES):
        return False
    return not (name in _RESERVED and d.is_dir(follow_symlinks=False))


def entry_of(job_dir: Path, name: str) -> Entry | None:
    """What ``name`` is now; None if it is gone (taken, or deleted since the listing)."""
    try:
        st = os.lstat(job_dir / name)
    except FileNotFoundError:
        return None
    return Entry(name, st.st_size, st.st_mtime_ns, refusal(st.st_mode))


def refusal(mode: int) -> str | None:
    """Why a name of this file type can never be read as input; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "symlink: links are not followed, nothing outside the spool is read"
    if stat.S_ISDIR(mode):
        return "directory where a file was expected"
    if stat.S_ISFIFO(mode):
        return "FIFO: only regular files are read"
    return "not a regular file"


def claim(job_dir: Path, name: str, claim_id: str) -> Path | None:
    """Move ``name`` into ``.work/`` as ``<claim_id>-<name>`` (the path the checkpoint
    recorded for the claim). None if another daemon, or the producer, took it first."""
    target = job_dir / WORK / f"{claim_id}-{name}"
    try:
        os.rename(job_dir / name, target)
    except FileNotFoundError:
        return None
    return target


def claim_batch(
    cp: Checkpoint, job: str, job_dir: Path, names: list[str], fingerprint: str
) -> tuple[list[Source], list[tuple[str, OSError]]]:
    """Claim settled files: one transaction records them all, then each is renamed.

    Returns the sources claimed and the names whose rename failed for another
    reason than a lost race (the caller refuses those). A crash between the
    commit and a rename leaves a row that ``claim_happened`` forgets at start-up.
    """
    sources = cp.add_sources(job, job_dir / WORK, names, fingerprint)
    crashpoints.hit("claim_recorded")
    won, lost, refused = [], [], []
    for src in sources:
        try:
            target = claim(job_dir, src.name, src.claim)
        except OSError as e:
            lost.append(src.id)
            refused.append((src.name, e))
            continue
        if target is None:
            lost.append(src.id)  # another daemon, or the producer, took it first
            continue
        won.append(src)
    if won:
        fsync_dirs(job_dir / WORK, job_dir)
        crashpoints.hit("claim_renamed")
    if lost:
        cp.forget_sources(lost)
    return won, refused


def claim_surely_happened(cp: Checkpoint, src: Source) -> bool:
    """Its file is in ``.work/`` or any of its items is done (then a vanished file is
    reported, never silently forgotten). Reads only: a dry run asks it too."""
    return Path(src.path).exists() or src.resume_seq > 0 or cp.has_items(src.id)


def claim_happened(cp: Checkpoint, src: Source) -> bool:
    """A crash between recording a claim and its rename leaves a row to forget."""
    if claim_surely_happened(cp, src):
        return True
    cp.forget_source(src.id)
    log.info("claim_forgotten", job=src.job, file=src.name)
    return False


def sweep_work(cp: Checkpoint, job_dir: Path) -> None:
    """Finish moves a crash interrupted: a finished source's file left in ``.work/``."""
    work = job_dir / WORK
    names = {p.name.split("-", 1)[0]: p for p in work.iterdir() if "-" in p.name}
    moved: set[Path] = set()
    for claim_id, target in cp.ended_paths(names).items():
        src_path = names[claim_id]
        if str(src_path) != target and not Path(target).exists():
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            os.rename(src_path, target)
            moved.add(Path(target).parent)
            log.info("move_finished", file=src_path.name, moved_to=target)
    if moved:
        fsync_dirs(work, *moved)


def done_targets(job_dir: Path, names: Iterable[str]) -> list[str]:
    """Free names in ``done/`` for finished files: none taken, none given twice."""
    folder = job_dir / DONE
    folder.mkdir(parents=True, exist_ok=True)  # once a batch: someone may have removed it
    base = str(folder) + os.sep
    given: set[str] = set()
    out = []
    for name in names:
        target, n = base + name, 1
        while target in given or os.path.lexists(target):
            n += 1
            target = f"{base}{name}.{n}"
        given.add(target)
        out.append(target)
    return out


def move_finished(moves: list[tuple[Source, str]]) -> None:
    """After the commit that says so: move finished files from ``.work/`` to ``done/``.

    A file that cannot be moved stays in ``.work/`` and the next start's
    ``sweep_work`` moves it: the checkpoint already holds its final path.
    """
    folders: set[str] = set()
    for src, target in moves:
        try:
            os.rename(src.path, target)
        except FileNotFoundError:
            log.warning("source_vanished", job=src.job, file=src.name)
            continue
        except OSError as e:
            log.error("source_move_failed", job=src.job, file=src.name, error=str(e))
            continue
        folders.add(os.path.dirname(src.path))
        folders.add(os.path.dirname(target))
        crashpoints.hit("source_moved")
    try:
        fsync_dirs(*map(Path, folders))
    except OSError as e:  # the commit stands; only a power cut now could undo a move
        log.error("fsync_failed", folders=sorted(folders), error=str(e))


def fail_claimed(cp: Checkpoint, job_dir: Path, src: Source, reason: str, detail: str) -> Path:
    """Move a claimed file that cannot be processed to ``failed/``, and say so durably."""
    current = Path(src.path)
    if current.exists():
        target = fail(job_dir, current, src.name, reason, detail)
    else:  # deleted while claimed: the report alone says what happened
        target = fail_missing(job_dir, src.name, reason, detail)
    fsync_dirs(current.parent, target.parent)
    crashpoints.hit("source_moved")
    cp.end_source(src.id, "failed", str(target), f"{reason}: {detail}")
    return target


def refuse(job_dir: Path, name: str, reason: str, detail: str) -> None:
    """Move an unclaimable name (a link, a FIFO, a folder) to ``failed/`` with the reason."""
    try:
        target = fail(job_dir, job_dir / name, name, reason, detail)
    except FileNotFoundError:
        return
    fsync_dirs(job_dir, target.parent)


def bom_codec(head: bytes) -> str | None:
    """The codec a UTF-16/32 byte-order mark at the start of ``head`` names, if any."""
    return next((c for bom, c in _BOMS if head.startswith(bom)), None)


def file_bom_codec(path: Path) -> str | None:
    """The codec a UTF-16/32 byte-order mark at the start of the file names, if any."""
    with open(path, "rb") as f:
        return bom_codec(f.read(4))


def untouched(src: Source) -> bool:
    """Nothing of the claimed file is done yet: the one time it may be transcoded."""
    return src.resume_offset == 0 and src.resume_seq == 0


def open_at_resume(src: Source, path: Path) -> BinaryIO:
    """``path`` (the claimed file, or a copy of it) open where ``src``'s work resumes."""
    f = open(path, "rb")  # noqa: SIM115 - returned open: the caller's with-block closes it
    try:
        f.seek(src.resume_offset)
    except OSError:
        f.close()
        raise
    return f


def utf8_copy(path: Path, folder: Path) -> Path:
    """``path``, or a UTF-8 copy of it in ``folder`` if it has a UTF-16/32 BOM: what the
    file will read as once claimed, without touching it. Raises ``InputError``."""
    if file_bom_codec(path) is None:
        return path
    copy = folder / path.name
    shutil.copyfile(path, copy)
    transcode_if_bom(copy)
    return copy


def transcode_if_bom(path: Path) -> str | None:
    """Rewrite a UTF-16/32 file with a BOM as UTF-8 in place; return the codec."""
    codec = file_bom_codec(path)
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
    fsync_dir(path.parent)  # the claimed file is now the UTF-8 copy, for good
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

    @property
    def size(self) -> int:
        """The file's size when it was opened."""
        return self._size

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
