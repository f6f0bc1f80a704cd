"""The sd_notify client: datagrams to $NOTIFY_SOCKET; the watchdog interval from systemd."""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from synthd.notify import notify, watchdog_interval_s


@pytest.fixture
def no_systemd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not inherit a real manager's variables (pytest run from a unit)."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def path_receiver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_systemd_env: None
) -> Iterator[socket.socket]:
    """A bound AF_UNIX datagram socket standing in for systemd, named by $NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    assert len(os.fsencode(path)) < 108, "AF_UNIX paths are limited to 107 bytes"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


@pytest.mark.parametrize(
    "message",
    ["READY=1", "WATCHDOG=1", "STOPPING=1", "STATUS=12 files, 340 in flight\nREADY=1"],
)
def test_notify_delivers_the_datagram_byte_exact(
    path_receiver: socket.socket, message: str
) -> None:
    assert notify(message) is True
    assert path_receiver.recv(4096) == message.encode()


def test_notify_sends_utf8_and_escapes_what_cannot_be_encoded(
    path_receiver: socket.socket,
) -> None:
    assert notify("STATUS=déjà vu ✓")
    assert path_receiver.recv(4096) == "STATUS=déjà vu ✓".encode()
    # A lone surrogate, as os.fsdecode makes of an undecodable file name.
    assert notify("STATUS=spool/\udcff.txt")
    assert path_receiver.recv(4096) == b"STATUS=spool/\\udcff.txt"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux's")
def test_notify_reaches_an_abstract_socket(
    monkeypatch: pytest.MonkeyPatch, no_systemd_env: None
) -> None:
    name = f"synthd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1") is True
        assert sock.recv(4096) == b"READY=1"


@pytest.mark.parametrize("value", [None, "", "relative/notify.sock"])
def test_notify_without_a_usable_address_does_nothing(
    monkeypatch: pytest.MonkeyPatch, no_systemd_env: None, value: str | None
) -> None:
    if value is not None:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert notify("READY=1") is False


def test_notify_to_a_missing_socket_returns_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_systemd_env: None
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent.sock"))
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", f"@synthd-test-absent-{uuid.uuid4().hex}")
    assert notify("READY=1") is False


def test_notify_to_a_closed_socket_returns_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_systemd_env: None
) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
    # The file stays behind with nobody listening: ECONNREFUSED.
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert notify("READY=1") is False


def test_notify_never_blocks_when_the_manager_stops_reading(
    path_receiver: socket.socket,
) -> None:
    # The receiver never reads: its queue fills, and notify must then fail fast (EAGAIN)
    # instead of stalling the event loop.
    started = time.monotonic()
    results = [notify("WATCHDOG=1") for _ in range(10_000)]
    assert results[0] is True
    assert False in results
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("usec", "expected"),
    [
        (None, None),
        ("30000000", 30.0),
        ("1500000", 1.5),
        ("1", 1e-6),
        ("0", None),
        ("-5", None),
        ("", None),
        ("30s", None),
        (" 30", None),
        ("٣٠", None),  # Arabic-Indic digits: decimal to Python, not to systemd
    ],
)
def test_watchdog_interval_from_watchdog_usec(
    monkeypatch: pytest.MonkeyPatch, no_systemd_env: None, usec: str | None, expected: float | None
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    assert watchdog_interval_s() == expected


def test_watchdog_interval_respects_watchdog_pid(
    monkeypatch: pytest.MonkeyPatch, no_systemd_env: None
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_PID", "not-a-pid")
    assert watchdog_interval_s() is None
