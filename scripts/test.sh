#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with the Rust toolchain: installs what is absent
# (OpenSSH server and client, shellcheck, procps, sudo), then runs every unit and integration test.
# Tests start their own sshd daemons on loopback and stop them by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v ssh-keygen >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
command -v pgrep >/dev/null 2>&1 || need_apt+=(procps)
command -v sudo >/dev/null 2>&1 || need_apt+=(sudo)
command -v ssh-agent >/dev/null 2>&1 || need_apt+=(openssh-client)
if [ "${#need_apt[@]}" -gt 0 ]; then
  sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo -n)
  echo "installing: ${need_apt[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if [ "$(id -u)" != 0 ]; then
  echo "warning: the sshd test hosts need root (they create the login user 'runetest' and start sshd)" >&2
fi

# Benches are left out on purpose: `cargo bench --bench fanout` runs them (see BENCHMARKS.md).
cargo test --locked --lib --bins --tests "$@"
