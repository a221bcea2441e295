# Sourced by ./cogtrain and ./run-tests: make sure .venv exists and holds the project.
# Usage: ensure_venv [EXTRA]   (EXTRA: an optional-dependency group of pyproject.toml, e.g. test)
# Reinstalls only when pyproject.toml changed or a group is missing, so repeated runs are fast.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

_find_python() {
  local candidate
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

_apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $* with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    return 1
  fi
}

ensure_venv() {
  local extra="${1:-}" python stamp wanted
  python="$(_find_python)" || { _apt_install python3 python3-venv python3-pip && python="$(_find_python)"; } || {
    echo "cogtrain needs Python 3.11 or newer on PATH" >&2
    return 1
  }
  if [ ! -x "$VENV/bin/python" ]; then
    "$python" -m venv "$VENV" 2>/dev/null || { _apt_install python3-venv && "$python" -m venv "$VENV"; } || {
      echo "cannot create $VENV: install the venv module (Debian: apt-get install python3-venv)" >&2
      return 1
    }
  fi
  wanted="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16) ${extra:-base}"
  stamp="$VENV/.cogtrain-installed"
  # Any group satisfies "base"; the test group holds everything the local group does.
  if [ -f "$stamp" ] && { grep -qxF "$wanted" "$stamp" || { [ -z "$extra" ] && grep -q "^${wanted%% *} " "$stamp"; } ||
       { [ "$extra" = local ] && grep -qxF "${wanted%% *} test" "$stamp"; }; }; then
    return 0
  fi
  echo "installing cog-training-operator${extra:+ [$extra]} into .venv (first run only)" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT${extra:+[$extra]}" 2>&1 |
    grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c 'import cogtrain' || { echo "installing the project into .venv failed" >&2; return 1; }
  echo "$wanted" >> "$stamp"
}

# ensure_command COMMAND DEBIAN_PACKAGE: install the package with apt-get when the command is missing.
ensure_command() {
  local command="$1" package="$2"
  if ! command -v "$command" >/dev/null 2>&1 && [ ! -x "/usr/bin/$command" ]; then
    _apt_install "$package" || { echo "the tests need $command: apt-get install $package" >&2; return 1; }
  fi
}
