#!/usr/bin/env bash
# Usage: ci/find-python.sh legacy|current. Prints the path of the interpreter for that stack:
#   legacy  = Python 3.11 ($LEGACY_PYTHON if set, else python3.11 / python3 on PATH, else pyenv);
#   current = Python >= 3.12, 3.12 first, then 3.13+ ($CURRENT_PYTHON if set, else python3.12 /
#             python3.13 on PATH, else pyenv's versions): jax 0.12 and flax >= 0.12.9 need 3.12.
# Exits 1 with a message naming what was tried when there is none.
set -u
stack=${1:-}
case "$stack" in
    legacy) want="3.11"; override=${LEGACY_PYTHON:-}; names="python3.11 python3"; globs="3.11*" ;;
    current) want="3.12+"; override=${CURRENT_PYTHON:-}; names="python3.12 python3.13"; globs="3.12* 3.1[3-9]*" ;;
    *) echo "usage: $0 legacy|current" >&2; exit 2 ;;
esac
ok() {
    if [ "$stack" = legacy ]; then check='sys.version_info[:2] != (3, 11)'; else check='sys.version_info < (3, 12)'; fi
    "$1" -c "import sys, venv; sys.exit($check)" >/dev/null 2>&1
}
if [ -n "$override" ]; then
    ok "$override" && { command -v "$override"; exit 0; }
    echo "$override (from the environment) is not a working Python $want for the $stack stack" >&2
    exit 1
fi
tried=()
for name in $names; do
    path=$(command -v "$name" 2>/dev/null) && ok "$path" && { echo "$path"; exit 0; }
    tried+=("$name")
done
root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
for glob in $globs; do
    for version in $(ls -d "$root"/versions/$glob 2>/dev/null | sort -V); do
        for candidate in "$version"/bin/python3.1[1-9]; do
            [ -x "$candidate" ] && ok "$candidate" && { echo "$candidate"; exit 0; }
        done
        tried+=("$version")
    done
done
tried+=("$root/versions/{${globs// /,}}")
echo "no Python $want found for the $stack stack (tried: ${tried[*]}); install one (e.g. with pyenv) or set ${stack^^}_PYTHON=/path/to/python" >&2
exit 1
