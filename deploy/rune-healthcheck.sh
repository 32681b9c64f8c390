#!/usr/bin/env bash
# HEALTHCHECK of the rune image: GET /healthz on the webhook listener with bash's /dev/tcp (no curl in the
# image); healthy when the answer is 200. RUNE_HEALTH_ADDR overrides host:port (default 127.0.0.1:9300).
set -euo pipefail
addr=${RUNE_HEALTH_ADDR:-127.0.0.1:9300}
host=${addr%:*}
port=${addr##*:}
exec 3<>"/dev/tcp/$host/$port"
printf 'GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$addr" >&3
IFS= read -r -t 5 status <&3
exec 3<&-
case $status in
  "HTTP/1.1 200 "*) exit 0 ;;
  *) echo "rune /healthz: ${status:-no answer}" >&2; exit 1 ;;
esac
