#!/usr/bin/env bash
# Installs the Debian packages the test suite uses as real parts (a Redis server, a headless
# browser, promtool), when they are absent and this user may install them. CI runs as root on a
# clean machine; elsewhere a missing part is reported and the tests that need it skip, saying so.
set -uo pipefail

# command -> Debian package
declare -A NEEDED=(
    [redis-server]=redis-server
    [chromium]=chromium
    [promtool]=prometheus
)

missing=()
for cmd in "${!NEEDED[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEEDED[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system-packages: not installing ${missing[*]} (needs root and apt-get);" \
         "the tests that use them will skip" >&2
    exit 0
fi
echo "system-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || echo "system-packages: apt-get could not install ${missing[*]}; the tests that use them will skip" >&2
exit 0
