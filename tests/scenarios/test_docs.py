"""The README and docs/ stay true: every command they show is run, every link resolves.

Each shell block (```sh) line and each ``$ `` line of a ```console block is one command.
How each kind is tested:

- ``synthd ...`` (any install path, or inside ``docker compose exec synthd``): run for real,
  as ``python -m synthd``, in a deployment made of the repository's own ``config/``,
  ``prompts/`` and ``examples/`` pointed at the simulator, after a small ``run --once`` of
  the shipped jobs. ``--config`` is pointed at that deployment's config; ``run`` without
  ``--once`` gets ``--once`` (a daemon that stays up would never return).
- ``cp``, ``mkdir``, ``printf ... >``: run for real in that deployment; ``tail -f GLOB``:
  the glob must match a file there after the run.
- ``make T``: T is a target of the Makefile (and ``VAR=`` one of its variables).
- ``docker build/run``: the Dockerfile exists and declares each ``-v`` volume and ``-p`` port;
  ``docker compose``: compose.yaml exists and has the service named.
- ``systemctl``, ``install``, ``useradd``, ``python3.11 -m venv``, ``cd /var/lib/synthd``,
  ``sudo -u synthd``: checked against deploy/synthd.service (the files installed exist, the
  user, paths and reload are the unit's); ``sudo chown`` against the image's uid.
- ``.venv/bin/python -m pytest ARGS``: its test paths exist and its ``-k`` names a test file or
  a test.
- ``.venv/bin/python bench/X.py ARGS``: ``--help`` runs and names every flag used.
- ``promtool ...``: run from the checkout when installed (else the files it names exist).
- ``synthd status --watch``: run for real with ``--count 2`` (it would redraw until Ctrl-C).

A command no rule knows fails the test: a new kind of command needs a rule here.
Links: every relative link names an existing file, and every ``#anchor`` a heading of it.
"""

from __future__ import annotations

import ast
import glob
import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import sim_process

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
UNIT = ROOT / "deploy" / "synthd.service"
TIMEOUT_S = 120


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def code_blocks(path: Path) -> Iterator[tuple[str, int, list[str]]]:
    """(language, line of the first content line, lines) for each fenced block."""
    lang: str | None = None
    start = 0
    body: list[str] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip(), n + 1, []
            else:
                yield lang, start, body
                lang = None
        elif lang is not None:
            body.append(line)


def commands() -> list[Command]:
    out = []
    for page in PAGES:
        name = str(page.relative_to(ROOT))
        for lang, start, body in code_blocks(page):
            if lang == "sh":
                joined, first = "", 0
                for i, line in enumerate(body):
                    if not joined:
                        first = start + i
                    if line.endswith("\\"):
                        joined += line[:-1] + " "
                        continue
                    text = (joined + line).strip()
                    joined = ""
                    if text and not text.startswith("#"):
                        out.append(Command(name, first, text))
            elif lang == "console":
                out.extend(
                    Command(name, start + i, line[2:])
                    for i, line in enumerate(body)
                    if line.startswith("$ ")
                )
    return out


COMMANDS = commands()


# -- the deployment the synthd commands run in ---------------------------------------------


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The shipped config, prompts and examples on the simulator, after a small run."""
    d = tmp_path_factory.mktemp("deploy")
    for folder in ("config", "prompts", "examples"):
        shutil.copytree(ROOT / folder, d / folder)
    shutil.copytree(ROOT / "examples" / "questions", d / "my_passages")
    with sim_process() as url:
        cfg = d / "config" / "synthd.toml"
        text = cfg.read_text()
        shipped = ['base_url = "http://127.0.0.1:8900/v1"', 'listen = "127.0.0.1:9464"']
        for s in shipped:
            assert s in text, f"config/synthd.toml changed: update the fixture ({s})"
        text = text.replace(shipped[0], f'base_url = "{url}"')
        text = text.replace(shipped[1], 'listen = ""\nsettle_s = 0\nscan_interval_s = 0.1')
        cfg.write_text(text)
        for job in ("questions", "analysis"):
            (d / "spool" / job).mkdir(parents=True)
            for f in (ROOT / "examples" / job).glob("*.txt"):
                shutil.copy(f, d / "spool" / job / f.name)
        (d / "spool" / "conversations").mkdir(parents=True)
        shutil.copy(
            ROOT / "examples" / "conversations" / "topics.txt", d / "spool" / "conversations"
        )
        got = synthd(d, ["run", "--config", "config/synthd.toml", "--once"])
        assert got.returncode == 0, got.stderr + got.stdout
        for job in ("questions", "analysis", "conversations"):
            assert list((d / "out" / job).glob(f"{job}-*.jsonl*")), f"no records for {job}"
        yield d


def synthd(cwd: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_API_KEY": "sk-docs-test"}
    return subprocess.run(
        [sys.executable, "-m", "synthd", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


# -- one rule per kind of command -----------------------------------------------------------


def run_synthd(words: list[str], deploy: Path) -> None:
    argv = list(words)
    if "--config" in argv:
        argv[argv.index("--config") + 1] = "config/synthd.toml"
    if argv[0] == "run" and "--once" not in argv:
        argv.append("--once")
    if argv[0] == "status" and "--watch" in argv and "--count" not in argv:
        argv += ["--count", "2", "--interval-s", "0.1"]  # it would redraw until Ctrl-C
    got = synthd(deploy, argv)
    assert got.returncode == 0, f"synthd {' '.join(argv)}: {got.returncode}\n{got.stderr}"


def check_make(words: list[str]) -> None:
    makefile = (ROOT / "Makefile").read_text()
    for w in words[1:]:
        if "=" in w:
            var = w.split("=", 1)[0]
            assert re.search(rf"^{var}\s*\??=", makefile, re.M), f"Makefile has no {var}"
        else:
            assert re.search(rf"^{re.escape(w)}:", makefile, re.M), f"Makefile has no {w}"


def check_docker(words: list[str], deploy: Path) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    if words[1] == "build":
        assert words[-1] == "." and (ROOT / "Dockerfile").is_file()
    elif words[1] == "run":
        for flag, value in itertools.pairwise(words):
            if flag == "-v":
                inside = value.split(":")[1]
                assert f'"{inside}"' in dockerfile, f"the image declares no volume {inside}"
            if flag == "-p":
                assert f"EXPOSE {value.rsplit(':', 1)[1]}" in dockerfile
    elif words[1] == "compose":
        compose = (ROOT / "compose.yaml").read_text()
        if words[2] == "exec":
            assert re.search(rf"^  {words[3]}:", compose, re.M), f"no service {words[3]}"
            assert words[4] == "synthd"
            run_synthd(words[5:], deploy)
        else:
            assert words[2] == "up", words
    else:
        raise AssertionError(f"no rule for docker {words[1]}")


def check_system(words: list[str]) -> None:
    """The systemd install steps: what they name is what the unit uses."""
    unit = UNIT.read_text()
    cmd = words[0]
    if cmd == "systemctl":
        assert words[-1] in ("synthd", "daemon-reload"), words
        if words[1] == "reload":
            assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    elif cmd == "install":
        sources = [w for w in words[1:] if "/" in w and not w.startswith(("/", "-"))]
        for s in sources:
            assert (ROOT / s).is_file(), f"{s} does not exist"
        dest = words[-1].rstrip("/")
        assert dest in unit or dest == "/etc/systemd/system", f"the unit does not use {dest}"
    elif cmd == "useradd":
        assert f"User={words[-1]}" in unit
        home = words[words.index("--home-dir") + 1]
        assert f"WorkingDirectory={home}" in unit
    elif cmd == "cd":
        assert f"WorkingDirectory={words[1]}" in unit
    else:  # python3.11 -m venv VENV, VENV/bin/pip install synthd-*.whl
        venv = words[-1] if cmd.startswith("python3") else words[0].rsplit("/bin/", 1)[0]
        assert f"ExecStart={venv}/bin/synthd run" in unit


def check_pytest(words: list[str]) -> None:
    """A test path exists; a ``-k`` name is in a test file's name or a test's.

    Not ``--collect-only``: it imports the whole suite, 30 s on a busy machine.
    """
    tests = list((ROOT / "tests").rglob("test_*.py"))
    for flag, value in itertools.pairwise(words):
        if flag == "-k":
            assert any(value in t.name or f"def {value}" in t.read_text() for t in tests), (
                f"no test is named like {value}"
            )
    for w in words:
        if w.startswith("tests/"):
            assert (ROOT / w.split("::")[0]).exists(), f"{w} does not exist"


def check_bench(words: list[str]) -> None:
    script = ROOT / words[0]
    got = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert got.returncode == 0, got.stderr
    for w in words[1:]:
        if w.startswith("--"):
            assert w in got.stdout, f"{script.name} has no {w}"


def check_promtool(words: list[str]) -> None:
    """Run for real from the checkout when promtool is installed; else its files exist."""
    for w in words[1:]:
        if "/" in w:
            assert (ROOT / w).is_file(), f"{w} does not exist"
    if shutil.which("promtool") is None:
        return
    got = subprocess.run(words, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert got.returncode == 0, got.stdout + got.stderr


def check(words: list[str], env: dict[str, str], deploy: Path) -> None:
    cmd = Path(words[0]).name
    if cmd == "synthd":
        run_synthd(words[1:], deploy)
    elif cmd == "make":
        check_make(words)
    elif cmd == "docker":
        check_docker(words, deploy)
    elif cmd in ("systemctl", "install", "useradd", "cd", "pip") or cmd.startswith("python3."):
        check_system(words)
    elif cmd == "sudo" and words[1] == "-u":
        assert f"User={words[2]}" in UNIT.read_text()
        check(words[3:], env, deploy)
    elif cmd == "sudo" and words[1] == "chown":
        uid = words[3].split(":")[0]
        assert f"--uid {uid}" in (ROOT / "Dockerfile").read_text()
    elif cmd == "export":
        name = words[1].split("=", 1)[0]
        assert f'api_key_env = "{name}"' in (ROOT / "config" / "synthd.toml").read_text()
    elif cmd == "python" and words[1:3] == ["-m", "pytest"]:
        assert env.keys() <= {"CRASH_POINT_ROUNDS", "CRASH_POINT_SEED"}, env
        check_pytest(words[3:])
    elif cmd == "python" and words[1].startswith("bench/"):
        check_bench(words[1:])
    elif cmd == "promtool":
        check_promtool(words)
    elif cmd == "tail" and words[1] == "-f":
        assert glob.glob(str(deploy / words[2])), f"nothing matches {words[2]}"
    else:
        raise AssertionError(f"no rule for {words[0]}: add one to test_docs.py")


def segments(text: str) -> Iterator[tuple[dict[str, str], list[str]]]:
    """A command line as (environment, words) pieces between ``&&``."""
    words = shlex.split(text, comments=True)
    while words:
        cut = words.index("&&") if "&&" in words else len(words)
        piece, words = words[:cut], words[cut + 1 :]
        env = {}
        while piece and re.match(r"^[A-Z_]+=", piece[0]):
            k, v = piece.pop(0).split("=", 1)
            env[k] = v
        yield env, piece


def test_the_docs_show_commands() -> None:
    """The extraction itself works: the two commands and the first run are found."""
    texts = [c.text for c in COMMANDS]
    assert "make demo" in " ".join(texts) and "make test" in " ".join(texts)
    assert any(c.page == "README.md" and "synthd run" in c.text for c in COMMANDS)


SHELL_WORDS = ("cp", "mkdir", "printf")


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_command(command: Command, deployment: Path) -> None:
    if command.text.split()[0] in SHELL_WORDS:  # globs and redirections: the shell's
        got = subprocess.run(command.text, shell=True, cwd=deployment, capture_output=True)
        assert got.returncode == 0, got.stderr
        return
    for env, words in segments(command.text):
        check(words, env, deployment)


def test_status_output_shown_is_the_real_one(deployment: Path) -> None:
    """The header of the status table in the docs is the one the command prints."""
    shown = next(
        body
        for lang, _, body in code_blocks(ROOT / "docs" / "operations.md")
        if lang == "console" and body[0].startswith("$ synthd status")
    )
    got = synthd(deployment, ["status", "--config", "config/synthd.toml"])
    header = next(line for line in shown if line.startswith("job "))
    assert header.split() in [line.split() for line in got.stdout.splitlines()]


# -- links ----------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            out.add(slug(line.lstrip("#")))
    return out


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page: Path) -> None:
    """Every relative link names a file that exists and an anchor that exists in it.
    (Links to the web are not fetched: the tests run offline.)"""
    links = LINK.findall(page.read_text())
    for target in links:
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name}: {target}: no such file"
        if anchor:
            assert anchor in anchors(path), f"{page.name}: {target}: no such heading"


# -- the architecture page names what exists ------------------------------------------------


def defined_names(module: Path) -> set[str]:
    """Top-level functions and classes, and Class.method for methods."""
    tree = ast.parse(module.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(f"{node.name}.{sub.name}")
    return names


def test_architecture_names_functions_that_exist() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    named: list[tuple[str, str]] = []
    for row in re.findall(r"^\| \d+ \| `(synthd/[\w/]+\.py)` \| ([^|]+) \|", text, re.M):
        module, functions = row
        named.extend((module, f) for f in re.findall(r"`([\w.]+)`", functions))
    named.extend((m, f) for f, m in re.findall(r"`([\w.]+)` in `(synthd/[\w/]+\.py)`", text))
    assert len(named) > 30
    missing = [f"{m}: {f}" for m, f in named if f not in defined_names(ROOT / m)]
    assert not missing, missing


def test_architecture_tree_lists_every_module() -> None:
    """The file tree in docs/architecture.md: one line per module, each one that exists."""
    tree = next(
        body
        for lang, _, body in code_blocks(ROOT / "docs" / "architecture.md")
        if lang == "text" and body[0] == "synthd/"
    )
    listed, folder = [], ""
    for line in tree[1:]:
        if not line.strip():
            continue
        name = line.split()[0]
        depth = (len(line) - len(line.lstrip())) // 2
        if name.endswith("/"):
            folder = name
        elif name.endswith(".py"):
            listed.append((folder if depth > 1 else "") + name)
    actual = sorted(str(p.relative_to(ROOT / "synthd")) for p in (ROOT / "synthd").rglob("*.py"))
    assert sorted(listed) == actual
