# Sourced by the other scripts: make .venv (once) and install geotm into it, with extras "$@".
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
extras="${GEOTM_EXTRAS:-}"
stamp="$VENV/.installed${extras:+-$extras}"
# reinstall only when pyproject.toml changed since the last install
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -e "$ROOT${extras:+[$extras]}"
    touch "$stamp"
fi
