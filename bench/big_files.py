"""Peak memory with big contexts: ``--files`` files of ``--mb`` MB each, 512 in flight.

Admission slots alone would let 512 such files be in memory at once (gigabytes);
the byte budget of admitted input must keep the peak RSS to a few hundred MB.
Runs the daemon with ``--once`` against a simulator (300 ms latency, no rate
limit) and prints its peak RSS (from wait4), wall time and CPU.

    .venv/bin/python bench/big_files.py [--files 80] [--mb 3.9] [--in-flight 512]
"""

from __future__ import annotations

import argparse

from common import Workdir, emit, simulator

PASSAGE = "The harbour at dawn, cranes and gulls and the tide coming in over the stones. "


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=80)
    p.add_argument("--mb", type=float, default=3.9)
    p.add_argument("--in-flight", type=int, default=512)
    args = p.parse_args()
    size = int(args.mb * 1e6)
    text = (PASSAGE * (size // len(PASSAGE) + 1))[:size]
    with simulator(["--latency-ms", "300"]) as url, Workdir() as work:
        work.config(
            url, {"rpm": 10_000_000, "tpm": 10_000_000_000, "max_in_flight": args.in_flight}
        )
        folder = work.path / "spool" / "bench"
        folder.mkdir(parents=True)
        for i in range(args.files):
            (folder / f"big-{i:04d}.txt").write_text(f"{i} {text}")
        run = work.run("--once")
        emit(
            {
                "files": args.files,
                "mb_each": args.mb,
                "max_in_flight": args.in_flight,
                "peak_rss_mb": round(run.max_rss_mb, 1),
                "wall_s": round(run.wall_s, 1),
                "daemon_cpu_s": round(run.cpu_s, 1),
                "exit": run.returncode,
            }
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
