"""The ``synthd`` command: arguments in, exit codes out.

Exit codes: 0 done, 1 an unexpected error, 2 a usage or config error, 130 a
second interrupt. This is the only place an exception becomes an exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from synthd import __version__
from synthd.errors import ConfigError, SynthdError
from synthd.export import FORMATS

EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sim"]:
        # The simulator owns its flags; argparse's REMAINDER would eat them.
        from synthd.sim import main as sim_main

        return sim_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command in ("status", "dry-run", "export", "report"):
        # Their stdout is their result (often JSON): any log line goes to stderr.
        from synthd import logs

        logs.configure_to_stderr("warning")
    try:
        result: int = args.func(args)
        return result
    except ConfigError as e:
        print(f"synthd: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except SynthdError as e:
        print(f"synthd: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="synthd", description="Turn raw text into fine-tuning datasets, exactly once."
    )
    p.add_argument("--version", action="version", version=f"synthd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument("--once", action="store_true", help="process the spool, then exit")
    run.add_argument("--log-file", type=Path, help="append JSON logs here instead of stdout")
    run.add_argument("--log-level", default="info")
    run.set_defaults(func=_run)

    sub.add_parser("sim", help="run the bundled OpenAI-compatible simulator (see sim --help)")

    exp = sub.add_parser(
        "export",
        help="write a job's records as fine-tuning files (exit 1 if any failed the check)",
    )
    exp.add_argument("job")
    exp.add_argument("--config", type=Path, required=True)
    exp.add_argument("--format", choices=FORMATS, required=True)
    exp.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FILE",
        help="training examples; validation ones go to FILE with .val before its suffix",
    )
    exp.add_argument("--val-fraction", type=_fraction, default=0.1)
    exp.add_argument("--seed", type=int, default=7, help="picks the train/validation split")
    exp.set_defaults(func=_export)

    rep = sub.add_parser(
        "report", help="write a job's quality report: DIR/report.html and DIR/report.json"
    )
    rep.add_argument("job")
    rep.add_argument("--config", type=Path, required=True)
    rep.add_argument("--out", type=Path, required=True, metavar="DIR")
    rep.set_defaults(func=_report)

    health = sub.add_parser("healthcheck", help="exit 0 if the daemon's /healthz answers")
    health.add_argument("--url", default="http://127.0.0.1:9464/healthz")
    health.add_argument("--timeout-s", type=float, default=3.0)
    health.set_defaults(func=_healthcheck)

    status = sub.add_parser("status", help="per job: files, items, tokens, cost, live queue")
    status.add_argument("--config", type=Path, required=True)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--metrics-url", help="the daemon's /metrics (default: from [service] listen)"
    )
    status.add_argument("--watch", action="store_true", help="redraw every --interval-s")
    status.add_argument("--interval-s", type=_interval, default=2.0, help="with --watch")
    status.add_argument("--count", type=_count, help="with --watch: stop after this many frames")
    status.set_defaults(func=_status)

    dry = sub.add_parser(
        "dry-run", help="show the first requests and estimate the backlog; sends nothing"
    )
    dry.add_argument("--config", type=Path, required=True)
    dry.add_argument("--job", action="append", default=[], help="only this job (repeatable)")
    dry.add_argument("-n", type=_count, default=5, help="requests to show per job (default 5)")
    dry.add_argument("--json", action="store_true", help="machine-readable output")
    dry.set_defaults(func=_dry_run)
    return p


def _run(args: argparse.Namespace) -> int:
    from synthd import config, crashpoints, logs
    from synthd.daemon import Daemon

    log_file = open(args.log_file, "ab") if args.log_file else None  # noqa: SIM115
    logs.configure(args.log_level, log_file)
    cfg = config.load(args.config)
    crashpoints.arm(config.crash_at())
    logs.register_secret(config.status_token())
    for name, provider in cfg.providers.items():
        key = cfg.api_key(name)
        logs.register_secret(key)
        host = urlparse(provider.base_url).hostname or ""
        if key is None and not _is_local(host):
            raise ConfigError(
                str(args.config),
                f"providers.{name}.api_key_env",
                f"{provider.api_key_env} is not set (needed for {host})",
            )
    return _run_loop(Daemon(cfg, once=args.once, tune_gc=True).run())


def _is_local(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _run_loop(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return int(uvloop.run(coro))


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def _export(args: argparse.Namespace) -> int:
    from synthd import config
    from synthd.export import export_job, render, val_path

    cfg = config.load(args.config)
    summary = export_job(
        cfg, args.job, args.format, args.out, val_fraction=args.val_fraction, seed=args.seed
    )
    print(render(summary, args.out, val_path(args.out)))
    return 0 if summary.ok else 1


def _report(args: argparse.Namespace) -> int:
    from synthd import config, report

    cfg = config.load(args.config)
    result = report.build(cfg, args.job)
    json_path, html_path = report.write(result, args.out)
    t = result["totals"]
    print(
        f"{args.job}: {t['records']} records, {t['rejects']} rejects, {t['dead']} dead letters"
        f" -> {html_path} and {json_path}"
    )
    return 0


def _healthcheck(args: argparse.Namespace) -> int:
    import urllib.request

    # No proxy: the daemon is on this host, whatever http_proxy says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(args.url, timeout=args.timeout_s) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as e:
        print(f"synthd: unhealthy: {e}", file=sys.stderr)
        return 1


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value >= 0.1:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0.1, got {text!r}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _status(args: argparse.Namespace) -> int:

    from synthd import config, status

    cfg = config.load(args.config)
    if args.watch:
        from synthd.watch import watch

        return watch(
            lambda: status.collect(cfg, args.metrics_url),
            sys.stdout,
            args.interval_s,
            args.count,
            args.json,
        )
    result = status.collect(cfg, args.metrics_url)
    _print(result.to_json() if args.json else status.render(result))
    return 0


def _dry_run(args: argparse.Namespace) -> int:

    from synthd import config, dryrun

    cfg = config.load(args.config)
    result = dryrun.plan(cfg, args.job, args.n)
    _print(result.to_json() if args.json else dryrun.render(result))
    return 0


def _print(result: str | dict[str, Any]) -> None:
    """A command's result on stdout: rendered text as is, or indented JSON."""
    if isinstance(result, str):
        sys.stdout.write(result)
        return
    import orjson

    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
