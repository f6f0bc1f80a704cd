"""``synthd status --watch``: frames of ``synthd status``'s own table, in place on a terminal."""

from __future__ import annotations

import io
import os
import pty
import select
import signal
import subprocess
import sys
import time

from synthd.status import JobStatus, Status, render
from synthd.watch import CLEAR_BELOW, CLEAR_LINE, HOME, frame, watch
from tests.helpers import Workdir, simple_job


def status(records: int) -> Status:
    job = JobStatus(
        "q",
        "m",
        "default",
        0,
        1,
        2,
        0,
        {"record": records, "rejected": 0, "dead": 0, "bad_input": 0},
        records,
        None,
        None,
        None,
        10,
        20,
        None,
    )
    return Status("c.toml", "state/synthd.db", None, False, [job])


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_each_frame_is_drawn_over_the_last() -> None:
    out = Tty()
    seen = iter([status(1), status(2)])
    slept: list[float] = []
    assert watch(lambda: next(seen), out, 1.5, count=2, sleep=slept.append) == 0
    assert slept == [1.5]
    frames = out.getvalue().split(HOME)[2:]  # the first HOME is the initial clear
    assert len(frames) == 2
    for n, f in zip((1, 2), frames, strict=True):
        lines = f.removesuffix(CLEAR_BELOW).split("\n")[:-1]
        assert all(line.endswith(CLEAR_LINE) for line in lines)
        table = [line.removesuffix(CLEAR_LINE) for line in lines[1:]]
        assert table == render(status(n)).splitlines()


def test_into_a_pipe_frames_are_plain_text() -> None:
    out = io.StringIO()
    watch(lambda: status(3), out, 2.0, count=2, sleep=lambda _: None)
    text = out.getvalue()
    assert "\x1b" not in text
    assert text.count(render(status(3))) == 2


def test_json_frames_are_one_line_each() -> None:
    out = Tty()
    watch(lambda: status(4), out, 2.0, count=3, as_json=True, sleep=lambda _: None)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(line.startswith('{"config"') for line in lines)


def test_frame_header_names_the_interval() -> None:
    assert frame(status(0), 0.5, 0.0, False).startswith("synthd status, every 0.5s")


def test_the_command_on_a_real_terminal_redraws_until_ctrl_c(work: Workdir) -> None:
    cfg = work.path / "config" / "synthd.toml"
    cfg.write_text('[service]\nlisten = ""\n' + simple_job())
    plain = subprocess.run(
        [sys.executable, "-m", "synthd", "status", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    parent, child = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "synthd",
            "status",
            "--config",
            str(cfg),
            "--watch",
            "--interval-s",
            "0.2",
        ],
        stdout=child,
        stderr=subprocess.DEVNULL,
        cwd=work.path,
        # Ctrl-C on a terminal finds SIGINT at its default; a runner started in the
        # background by a non-interactive shell passes it on ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    os.close(child)
    # A terminal's stdout is line-buffered: a frame arrives line by line, and a read may stop
    # inside one. Count whole frames (each ends by clearing below), and after Ctrl-C read to
    # the end, so the frame checked is the last one drawn whole however the reads fell.
    got = b""
    deadline = time.monotonic() + 60
    while got.count(CLEAR_BELOW.encode()) < 4 and time.monotonic() < deadline:
        if select.select([parent], [], [], 1)[0]:
            got += os.read(parent, 65536)
    proc.send_signal(signal.SIGINT)
    # Read while it ends: a process whose terminal is full blocks on its last write.
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        if select.select([parent], [], [], 0.2)[0]:
            try:
                got += os.read(parent, 65536)
            except OSError:  # EIO: the other side closed, it has ended
                break
    assert proc.wait(timeout=5) == 0
    got += read_to_end(parent)
    os.close(parent)
    text = got.decode().replace("\r\n", "\n")
    frames = [f.removesuffix("\n") for f in text.split(HOME)]  # Ctrl-C ends the line
    whole = [f for f in frames if f.endswith(CLEAR_BELOW)]
    assert len(whole) >= 4
    last = whole[-1].removesuffix(CLEAR_BELOW)
    table = [line.removesuffix(CLEAR_LINE) for line in last.split("\n")[1:] if line]
    assert table == [line for line in plain.splitlines() if line]


def read_to_end(fd: int) -> bytes:
    """What is left on a pty whose other side has closed (Linux then says EIO)."""
    data = b""
    while select.select([fd], [], [], 5)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data
