"""A dependency-free sd_notify client: readiness, watchdog and status for systemd.

The service manager passes an ``AF_UNIX`` datagram socket in ``$NOTIFY_SOCKET`` (a file-system
path, or ``@name`` for the abstract namespace) and, with ``WatchdogSec=``, the watchdog
interval in ``$WATCHDOG_USEC``. Outside systemd (a terminal, a container, a test) neither
variable is set and every call here is a cheap no-op, so the daemon calls these
unconditionally.

The variables are read by ``synthd.config`` (the only module that reads the environment),
at each call unless the caller passes a ``SystemdEnv``.

Nothing here raises because the manager is absent or unreachable, and nothing blocks: a
status message is a hint, and must never stall the event loop or kill the daemon.
"""

from __future__ import annotations

import os
import socket

from synthd.config import SystemdEnv, systemd_env

__all__ = ["notify", "watchdog_interval_s"]


def notify(message: str, env: SystemdEnv | None = None) -> bool:
    """Send one datagram, e.g. ``"READY=1"`` or ``"STATUS=42 items in flight"``, to the manager.

    Several assignments may share one message, separated by newlines. The text goes out
    UTF-8 encoded, byte for byte; characters that cannot be encoded (lone surrogates from an
    undecodable file name) are sent backslash-escaped rather than failing the call.

    Returns True once the kernel has accepted the datagram, and False, having done nothing,
    when ``$NOTIFY_SOCKET`` is unset or empty, names no supported address (anything but an
    absolute path or ``@name``), or the socket is missing, refuses, or is full. The socket is
    non-blocking, so the call never waits on the manager; it is safe on the event loop.
    """
    address = _notify_address((env or systemd_env()).notify_socket)
    if address is None:
        return False
    payload = message.encode("utf-8", "backslashreplace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:  # not inherited (PEP 446)
            sock.setblocking(False)
            sock.sendto(payload, address)
    except OSError:
        # ENOENT, ECONNREFUSED, EAGAIN (the manager's queue is full), ENAMETOOLONG, ...:
        # the manager cannot hear us now, and the daemon's work must go on regardless.
        return False
    return True


def watchdog_interval_s(env: SystemdEnv | None = None) -> float | None:
    """The watchdog interval the manager expects pings within, in seconds, or None.

    Read from ``$WATCHDOG_USEC``. None when it is unset, not a positive integer, or when
    ``$WATCHDOG_PID`` is set to a process other than this one (the variables were inherited
    from a parent and are not meant for us). Callers should send ``"WATCHDOG=1"`` at half
    this interval, as sd_watchdog_enabled(3) advises.
    """
    env = env or systemd_env()
    usec = _positive_int(env.watchdog_usec)
    if usec is None:
        return None
    pid_text = env.watchdog_pid
    if pid_text is not None and _positive_int(pid_text) != os.getpid():
        return None
    return usec / 1_000_000


def _notify_address(path: str | None) -> str | None:
    if not path:
        return None
    if path.startswith("@"):
        # Linux's abstract namespace: the address is a NUL followed by the name.
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    # Relative paths are refused by sd_notify(3) too; newer systemd's "vsock:" form is not
    # used for local services.
    return None


def _positive_int(text: str | None) -> int | None:
    if text is None or not (text.isascii() and text.isdecimal()):
        return None
    value = int(text)
    return value if value > 0 else None
