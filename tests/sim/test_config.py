"""synthd.sim.config: flags -> SimConfig, and validation."""

from __future__ import annotations

import pytest

from synthd.sim import SimConfig, main
from synthd.sim.config import parse_args


def test_no_flags_give_the_defaults() -> None:
    assert parse_args([]) == SimConfig()


def test_flags_map_to_fields() -> None:
    cfg = parse_args(
        [
            "--port=0", "--seed=5", "--mode=json", "--models=a, b", "--latency-ms=200",
            "--latency-spread-ms=50", "--latency-dist=normal", "--latency-per-token-ms=2",
            "--rpm=6000", "--tpm=2000000", "--limit-window-s=2", "--p-500=0.1", "--p-503=0.1",
            "--p-hang=0.1", "--p-drop=0.1", "--p-truncate=0.1", "--p-html=0.1",
            "--p-empty-choices=0.1", "--p-content-filter=0.1", "--p-no-usage=0.1",
            "--hang-s=3", "--fault-seed=9",
        ]
    )  # fmt: skip
    assert cfg == SimConfig(
        port=0, seed=5, mode="json", models=("a", "b"), latency_ms=200, latency_spread_ms=50,
        latency_dist="normal", latency_per_token_ms=2, rpm=6000, tpm=2_000_000,
        limit_window_s=2, p_500=0.1, p_503=0.1, p_hang=0.1, p_drop=0.1, p_truncate=0.1,
        p_html=0.1, p_empty_choices=0.1, p_content_filter=0.1, p_no_usage=0.1, hang_s=3,
        fault_seed=9,
    )  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [
        ["--p-500", "1.5"],
        ["--p-500", "0.6", "--p-503", "0.6"],
        ["--rpm", "-1"],
        ["--latency-ms", "-5"],
        ["--limit-window-s", "0"],
        ["--mode", "poetry"],
        ["--port", "70000"],
    ],
)
def test_bad_flags_exit_2_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_main_returns_exit_codes_instead_of_exiting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--p-drop", "2"]) == 2
    assert main(["--help"]) == 0
    assert "--latency-ms" in capsys.readouterr().out


def test_config_is_frozen_and_validated() -> None:
    cfg = SimConfig()
    with pytest.raises(AttributeError):
        cfg.port = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="sum"):
        SimConfig(p_hang=0.5, p_drop=0.6)
