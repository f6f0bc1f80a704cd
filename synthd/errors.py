"""The few exceptions synthd raises, each carrying the data a caller needs.

Only the CLI turns these into exit codes. The provider errors split into two
families: ``Retryable`` (429, 5xx, timeouts, dropped connections, malformed
bodies) and ``Rejected`` (a 4xx other than 429: sending it again cannot help).
"""

from __future__ import annotations

from typing import Any


class SynthdError(Exception):
    """Base of every error synthd raises on purpose."""


class ConfigError(SynthdError):
    """A config file, or a file it names, is wrong. Exit code 2."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + problem)


class InputError(SynthdError):
    """An input file or line cannot be turned into work items."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason  # short, stable code such as "binary" or "empty"
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class TemplateError(SynthdError):
    """A template names a placeholder that an item cannot fill."""

    def __init__(self, missing: str) -> None:
        self.missing = missing
        super().__init__(f"placeholder {{{{{missing}}}}} has no value in this item")


class ProviderError(SynthdError):
    """A request to a provider failed; ``kind`` is a stable metric label."""

    kind = "error"

    def __init__(self, detail: str, status: int | None = None) -> None:
        self.detail = detail
        self.status = status
        self.rate: Any = None  # the reply's RateHeaders, when there was a reply
        super().__init__(f"{self.kind}: {detail}")


class Retryable(ProviderError):
    """Sending the same request again may succeed."""

    kind = "retryable"


class RateLimited(Retryable):
    """HTTP 429. ``retry_after_s`` is the provider's hint, if it gave one."""

    kind = "rate_limited"

    def __init__(self, detail: str, retry_after_s: float | None) -> None:
        super().__init__(detail, 429)
        self.retry_after_s = retry_after_s


class ServerError(Retryable):
    kind = "server_error"


class QuotaExhausted(Retryable):
    """A 429 that means the account's quota or credit is used up, not "too many".

    It counts as a failed attempt (unlike a throttling 429): it fails for every item
    alike, so the provider circuit sees an outage and holds the items until it ends.
    """

    kind = "quota"


class Timeout(Retryable):
    kind = "timeout"


class ConnectionLost(Retryable):
    kind = "connection"


class MalformedResponse(Retryable):
    """A reply that does not parse or lacks what the protocol promises."""

    kind = "malformed"


class Rejected(ProviderError):
    """A 4xx other than 429: the request itself is wrong, retrying cannot help."""

    kind = "rejected"


class WriterFailed(SynthdError):
    """The single writer died; nothing more can become durable. Exit code 1."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        super().__init__(f"{path}: {detail}")


class DaemonFailed(SynthdError):
    """A long-lived task died of something no single file explains. Exit code 1:
    the daemon is meant to be restarted (systemd, Docker) into recovery."""

    def __init__(self, task: str, detail: str) -> None:
        self.task = task
        super().__init__(f"{task}: {detail}")


class OutputBlocked(SynthdError):
    """The output or state folder cannot take writes (disk full, read-only)."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        super().__init__(f"{path}: {detail}")


class ExportError(SynthdError):
    """A shard cannot be read or an export file cannot be written (``synthd export``)."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        super().__init__(f"{path}: {detail}")


class Unusable(Exception):
    """A record that cannot become an example; ``kind`` is a stable problem code.

    Not a ``SynthdError``: the exporter counts it per record, it never reaches the CLI.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(kind)


class InvalidRequest(Exception):
    """The simulator's 400: a request the real API would refuse; ``param`` names the field.

    Not a ``SynthdError``: the simulator turns it into an HTTP answer, never an exit code.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
