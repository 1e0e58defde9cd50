# Sourced by the other scripts: make .venv (once) and install geotm into it, with extras "$@".
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
extras="${GEOTM_EXTRAS:-}"
stamp="$VENV/.installed${extras:+-$extras}"
# the install builds the UDP extension (dnsd/protocol/_fastudp.c, Linux) when a C compiler and Python's
# headers are there; without them dnsd serves UDP through asyncio (slower), so get them from Debian
has_headers() { "$VENV/bin/python" -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; }
if [ "$(uname -s)" = Linux ]; then
    build=()
    command -v gcc >/dev/null 2>&1 || build+=(gcc libc6-dev)
    has_headers || build+=(python3-dev)
    if [ ${#build[@]} -gt 0 ]; then
        source "$ROOT/scripts/apt.sh"
        apt_install "dnsd.protocol._fastudp is not built without them (UDP through asyncio)" "${build[@]}" || true
    fi
fi
extension_missing() {  # a compiler and headers, but no extension built next to its source
    [ "$(uname -s)" = Linux ] && command -v gcc >/dev/null 2>&1 && has_headers \
        && ! compgen -G "$ROOT/dnsd/protocol/_fastudp*.so" >/dev/null
}
# reinstall only when pyproject.toml, setup.py or the extension's source changed since the last install
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || [ "$ROOT/setup.py" -nt "$stamp" ] \
        || [ "$ROOT/dnsd/protocol/_fastudp.c" -nt "$stamp" ] || extension_missing; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -e "$ROOT${extras:+[$extras]}"
    touch "$stamp"
fi
