#!/usr/bin/env bash
# ---
# bpcs: "0.1"
# name: restart-nomad
# version: 1.0.0
# description: Restarts the Nomad agent with systemctl, then waits until the unit is active, `nomad agent-info` succeeds and, on client agents, `nomad node status -self` succeeds.
# tags: [nomad, remediation]
# class: remediation
# needs_root: true
# timeout: 120
# requires: [systemctl, nomad]
# args:
#   service:
#     type: string
#     required: false
#     default: nomad
#     pattern: "^(nomad|nomad-client|nomad-server)([.]service)?$"
#     description: systemd unit to restart (only the Nomad units listed in the pattern; never an arbitrary unit)
#   verify_timeout:
#     type: integer
#     required: false
#     default: 60
#     pattern: "^(0|[1-9][0-9]{0,3})$"
#     description: Seconds to wait after the restart for the unit to be active and healthy (0 = check once); capped to what the run's timeout leaves
# ---
# restart-nomad.sh — restarts one systemd unit running a Nomad agent and reports whether the agent came back healthy.
# The nomad CLI uses the environment it is given (NOMAD_ADDR, NOMAD_TOKEN, ...); with ACLs on, agent-info needs
# a token with agent:read.
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib/bpcs.sh
. "$RUNE_LIB/bpcs.sh"
# shellcheck source=SCRIPTDIR/lib/restart.sh
. "$RUNE_LIB/restart.sh"

default_service=nomad
health_command='nomad agent-info + node status -self'

# health_ok: the agent answers its API and, if it runs a client, its node is known to the servers. A server-only
# agent has no "client" section in agent-info and would always fail `node status -self`. Each call is bounded;
# --foreground keeps the command in the plugin's process group, which RUNE kills when the run ends.
health_ok() {
  local info
  info=$(timeout --foreground 10 nomad agent-info </dev/null 2>/dev/null) || return 1
  if [[ $'\n'$info$'\n' != *$'\nclient\n'* ]]; then return 0; fi
  timeout --foreground 10 nomad node status -self -short </dev/null >/dev/null 2>&1
}

restart_unit_and_verify '^(nomad|nomad-client|nomad-server)([.]service)?$' 'nomad, nomad-client or nomad-server'
