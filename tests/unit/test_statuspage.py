import base64

import pytest

from synthd.statuspage import authorized, is_loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("synthd.example", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_token_as_bearer_or_as_a_basic_password() -> None:
    assert authorized("Bearer s3cret-token", "s3cret-token")
    assert authorized("bearer s3cret-token", "s3cret-token")
    assert authorized(basic("anyone", "s3cret-token"), "s3cret-token")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong",
        "Bearer s3cret-token-and-more",
        "Token s3cret-token",
        "s3cret-token",
        basic("s3cret-token", ""),  # the token as the user name is not the password
        "Basic not-base64!",
        "Basic " + base64.b64encode(b"\xff\xfe").decode(),
    ],
)
def test_anything_else_is_refused(header: str | None) -> None:
    assert not authorized(header, "s3cret-token")
