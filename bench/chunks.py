"""MB/s of extraction and chunking for text, HTML and PDF, and the chunker's memory.

Each kind goes through the daemon's own reader (``synthd.items.ChunkReader``: extraction,
then the streaming chunker) in this process, and the figure is input megabytes per CPU
second (wall time too, which other load on the machine depresses):

- text: the 1 MB public-domain book in examples/long repeated to ``--text-mb`` MB (or, with
  ``--contexts``, the shared contexts joined as paragraphs), streamed from a file; the peak
  of traced Python memory shows that the text is never held whole;
- html: the saved page in examples/long with ``--html-kb`` KB of the book as its article,
  ``--pages`` times;
- pdf: a ``--pdf-pages``-page two-column PDF of the book's text (written by tests/pdfs.py).

With ``--daemon-files N``, the daemon itself (against the simulator, no rate limit) runs on
N short contexts, one file each, once with ``input = "file"`` and once with ``input =
"chunks"``: what cutting costs per file when each file is a single passage.

    .venv/bin/python bench/chunks.py [--text-mb 64] [--chunk-tokens 1000] [--contexts PATH]
                                     [--daemon-files 3000]
"""

from __future__ import annotations

import argparse
import gzip
import html
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import orjson
from common import Workdir, contexts, emit, start_sim, stop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from synthd.items import ChunkReader  # noqa: E402
from synthd.models import Source  # noqa: E402
from tests.pdfs import pdf_of  # noqa: E402

BOOK = ROOT / "examples" / "long" / "kjv-genesis-to-ruth.txt"
PAGE = ROOT / "examples" / "long" / "saved-article.html"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text-mb", type=float, default=64)
    p.add_argument("--html-kb", type=int, default=200)
    p.add_argument("--pages", type=int, default=20)
    p.add_argument("--pdf-pages", type=int, default=100)
    p.add_argument("--chunk-tokens", type=int, default=1000)
    p.add_argument("--overlap", type=int, default=50)
    p.add_argument("--contexts", type=Path, help="the shared contexts.jsonl.gz as the text")
    p.add_argument("--daemon-files", type=int, default=0, help="also run the daemon on this many")
    args = p.parse_args()
    if args.daemon_files:
        for kind in ("file", "chunks"):
            emit(daemon_run(kind, args.daemon_files, args.contexts))
    book = BOOK.read_text()
    with tempfile.TemporaryDirectory(prefix="synthd-bench-chunks-") as tmp:
        folder = Path(tmp)
        text = folder / "long.txt"
        write_text(text, args.text_mb, args.contexts, book)
        emit(measure("text", [text], args, memory=True))
        page = folder / "page.html"
        page.write_bytes(page_with(book[: args.html_kb * 1000]))
        emit(measure("html", [page] * args.pages, args))
        pdf = folder / "paper.pdf"
        pdf.write_bytes(pdf_with(book, args.pdf_pages))
        emit(measure("pdf", [pdf], args))
    return 0


def measure(kind: str, paths: list[Path], args: argparse.Namespace, memory: bool = False) -> dict:
    """Read every file into passages as the daemon does; input MB per CPU second."""
    size = sum(p.stat().st_size for p in paths)
    passages = chars = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for path in paths:
        src = Source(1, "bench", "c", path.name, str(path), "fp")
        with open(path, "rb") as f:
            for item in ChunkReader(src, f, args.chunk_tokens, args.overlap):
                passages += 1
                chars += len(item.fields["context"])
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    out = {
        "kind": kind,
        "files": len(paths),
        "input_mb": round(size / 1e6, 2),
        "passages": passages,
        "text_mb": round(chars / 1e6, 2),
        "cpu_s": round(cpu, 2),
        "wall_s": round(wall, 2),
        "mb_per_cpu_s": round(size / 1e6 / cpu, 2),
        "passages_per_cpu_s": round(passages / cpu),
    }
    if memory:  # a second pass, traced: tracing slows it too much to time it
        tracemalloc.start()
        with open(paths[0], "rb") as f:
            src = Source(1, "bench", "c", paths[0].name, str(paths[0]), "fp")
            for _ in ChunkReader(src, f, args.chunk_tokens, args.overlap):
                pass
        out["peak_traced_mb"] = round(tracemalloc.get_traced_memory()[1] / 1e6, 2)
        tracemalloc.stop()
    return out


def daemon_run(kind: str, files: int, path: Path | None) -> dict:
    """The daemon on ``files`` one-context files with ``input = kind``: CPU per file."""
    sim, url = start_sim(["--latency-ms", "20"])
    work = Workdir()
    try:
        provider = {"rpm": 10_000_000, "tpm": 10_000_000_000, "max_in_flight": 256}
        work.config(url, provider, f'input = "{kind}"')
        work.spool_files(contexts(path, files))
        run = work.run("--once")
        return {
            "daemon_input": kind,
            "files": files,
            "records": work.count_lines(),
            "daemon_cpu_s": round(run.cpu_s, 2),
            "cpu_us_per_file": round(run.cpu_s / files * 1e6),
            "wall_s": round(run.wall_s, 1),
            "exit": run.returncode,
        }
    finally:
        stop(sim)
        work.remove()


def write_text(path: Path, mb: float, contexts: Path | None, book: str) -> None:
    """About ``mb`` MB of text: the book over and over, or the shared contexts."""
    want = int(mb * 1e6)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < want:
            for para in paragraphs(contexts) if contexts else [book]:
                f.write(para)
                f.write("\n\n")
                written += len(para.encode()) + 2
                if written >= want:
                    return


def paragraphs(path: Path) -> Iterator[str]:
    with gzip.open(path, "rb") as f:
        for raw in f:
            yield orjson.loads(raw)["text"]


def page_with(text: str) -> bytes:
    """The saved page with ``text`` as its article, a <p> per paragraph."""
    saved = PAGE.read_text()
    start, end = saved.index("<article"), saved.index("</article>")
    body = "\n".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n") if p.strip())
    return (saved[:start] + '<article class="post">' + body + saved[end:]).encode()


def pdf_with(book: str, pages: int) -> bytes:
    """A two-column PDF of the book's first words: 60 lines of 45 characters a column."""
    words = iter(book.split())
    out = []
    for _ in range(pages):
        columns = []
        for _ in range(2):
            lines = []
            for _ in range(60):
                line = ""
                for w in words:
                    line = f"{line} {w}" if line else w
                    if len(line) > 45:
                        break
                lines.append(line.encode("latin-1", "replace").decode("latin-1"))
            columns.append(lines)
        out.append(columns)
    return pdf_of(out)


if __name__ == "__main__":
    raise SystemExit(main())
