#!/usr/bin/env bash
# Regenerate requirements/*.lock from the pins in requirements/*.txt: every package, dependencies
# included, with the sha256 of each file pip may take. `make run`, `make test` and the Dockerfile
# install only from the locks (pip --require-hashes), so a file that changed on an index is
# refused. Run after editing a requirements/*.txt; commit the .txt and .lock together.
# usage: scripts/lock.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install --progress-bar off pip-tools==7.6.2 2>&1 | pip_filter
compile() {  # compile NAME: requirements/NAME.txt -> requirements/NAME.lock
  say "locking requirements/$1.txt"
  "$tools/venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
    --no-emit-find-links --output-file "requirements/$1.lock" "requirements/$1.txt" 2>&1 | pip_filter
  sed -i 's|^#    pip-compile .*|#    scripts/lock.sh (pip-compile --generate-hashes; see there)|' "requirements/$1.lock"
}
compile base
compile dev
# Installed with --no-deps: each pin and the hash of the file pip takes for it.
hashed() {  # hashed NAME: requirements/NAME.txt -> requirements/NAME.lock, no dependencies
  say "locking requirements/$1.txt (no dependencies)"
  local dl="$tools/$1"
  "$tools/venv/bin/pip" download --quiet --no-deps -d "$dl" -r "requirements/$1.txt" 2>&1 | pip_filter
  {
    echo "# requirements/$1.txt with hashes, installed with --no-deps (see there). Regenerate with scripts/lock.sh."
    grep -E '^[A-Za-z0-9_.-]+==' "requirements/$1.txt" | while read -r pin; do
      name="${pin%%==*}"
      file=$(ls "$dl" | grep -i "^$(echo "$name" | tr '-' '_')-${pin##*==}[-.]" | head -1)
      [ -n "$file" ] || die "no downloaded file for $pin"
      echo "$pin $("$tools/venv/bin/pip" hash "$dl/$file" | tail -1)"
    done
  } > "requirements/$1.lock"
}
hashed bfcl
hashed sglang-contract
say "done: review and commit requirements/*.lock"
