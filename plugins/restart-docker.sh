#!/usr/bin/env bash
# ---
# bpcs: "0.1"
# name: restart-docker
# version: 1.0.0
# description: Restarts the Docker daemon with systemctl, then waits until the unit is active and `docker info` succeeds.
# tags: [docker, remediation]
# class: remediation
# needs_root: true
# timeout: 120
# requires: [systemctl, docker]
# args:
#   service:
#     type: string
#     required: false
#     default: docker
#     pattern: "^(docker|docker-ce|snap[.]docker[.]dockerd)([.]service)?$"
#     description: systemd unit to restart (only the Docker units listed in the pattern; never an arbitrary unit)
#   verify_timeout:
#     type: integer
#     required: false
#     default: 60
#     pattern: "^(0|[1-9][0-9]{0,3})$"
#     description: Seconds to wait after the restart for the unit to be active and healthy (0 = check once); capped to what the run's timeout leaves
# ---
# restart-docker.sh — restarts one systemd unit running Docker and reports whether Docker came back healthy.
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib/bpcs.sh
. "$RUNE_LIB/bpcs.sh"
# shellcheck source=SCRIPTDIR/lib/restart.sh
. "$RUNE_LIB/restart.sh"

default_service=docker
health_command='docker info'

# health_ok: the daemon answers the API. Bounded so a wedged daemon cannot eat the run's timeout;
# --foreground keeps the command in the plugin's process group, which RUNE kills when the run ends.
health_ok() {
  timeout --foreground 10 docker info </dev/null >/dev/null 2>&1
}

restart_unit_and_verify '^(docker|docker-ce|snap[.]docker[.]dockerd)([.]service)?$' 'docker, docker-ce or snap.docker.dockerd'
