#!/usr/bin/env bash
# Install the system packages the test suite needs, when they are missing, on Debian/Ubuntu:
# openssh-server (the suite starts its own sshd on 127.0.0.1), openssh-client (ssh-keygen,
# ssh -G), sudo (the --sudo tests), python3-venv, and chromium with a font (tests/test_report.py
# renders `hostops report` pages in headless Chromium), groff (tests/test_manpage.py renders the
# man page), iproute2 (`ip netns` for the two-zone --cluster test, `ss` for the listening-socket
# check) and procps (pgrep). The README's test command runs this first,
# so that one command passes on a fresh machine; .ci/run runs that command.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
[ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1 || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v sudo >/dev/null 2>&1 || need+=(sudo)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v groff >/dev/null 2>&1 || need+=(groff-base)
{ command -v ip && command -v ss; } >/dev/null 2>&1 || need+=(iproute2)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core)
if [ "${#need[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: missing ${need[*]} and no apt-get here: install them by hand" >&2
    exit 1
  fi
  echo "system-deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
