#!/usr/bin/env bash
# Does the image's ENTRYPOINT work from a clean install? Mirrors the Dockerfile's builder
# without Docker: build the wheel, install it with its dependencies into a fresh venv (no
# system site-packages, no project checkout on sys.path), drop pip, run `synthd --help`.
# Needs PyPI (the dependencies and the build backend); takes a minute or two.
#
#   deploy/check-entrypoint.sh [PYTHON]     PYTHON defaults to python3.11, then python3
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${1:-$(command -v python3.11 || command -v python3)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# Build from a copy of what the Dockerfile copies, so the checkout gets no build/ folder
# and nothing outside those files can leak into the wheel.
mkdir "$work/src"
cp "$repo/pyproject.toml" "$work/src/"
[ -f "$repo/README.md" ] && cp "$repo/README.md" "$work/src/"
cp -r "$repo/synthd" "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +

"$python" -m venv "$work/venv"
"$work/venv/bin/pip" wheel --quiet --no-deps --wheel-dir "$work/wheels" "$work/src"
"$work/venv/bin/pip" install --quiet "$work/wheels"/synthd-*.whl
"$work/venv/bin/pip" uninstall --quiet --yes pip setuptools

# Run from an empty folder: nothing but the venv may provide the synthd package.
cd "$work"
"$work/venv/bin/synthd" --help >/dev/null
"$work/venv/bin/python" -m synthd --help >/dev/null
# The status page's assets are package data: a wheel without them serves a broken page.
"$work/venv/bin/python" -c "from importlib import resources as r; s = r.files('synthd') / 'static'; assert all((s / n).is_file() for n in ('index.html', 'status.js', 'status.css')), 'synthd/static/ is not in the wheel'"
echo "check-entrypoint: ok: synthd --help runs from a clean venv ($("$work/venv/bin/python" -V))"
