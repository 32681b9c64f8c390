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

# ---- from here on identical in restart-docker.sh and restart-nomad.sh ----

# reject MESSAGE: the input is unusable (RUNE validates first; this guards manual runs). Exit 2 per BPCS.
reject() {
  (bpcs_finish error "$1" false '{}') || true
  exit 2
}

service=${RUNE_ARG_service-$default_service}
verify_timeout=${RUNE_ARG_verify_timeout-60}
if [[ ! $service =~ ^(nomad|nomad-client|nomad-server)([.]service)?$ ]]; then
  reject "invalid service name (allowed: nomad, nomad-client or nomad-server; never an arbitrary unit)"
fi
if [[ ! $verify_timeout =~ ^(0|[1-9][0-9]{0,3})$ ]]; then
  reject "invalid verify_timeout '$verify_timeout' (an integer 0..9999)"
fi
run_timeout=${RUNE_TIMEOUT-120}
if [[ ! $run_timeout =~ ^[1-9][0-9]{0,5}$ ]]; then run_timeout=120; fi

# unit_active: what `systemctl is-active` says (active, activating, inactive, failed, ...; "unknown" if nothing).
unit_active() {
  local out
  out=$(systemctl is-active -- "$service" </dev/null 2>/dev/null) || true
  out=${out%%$'\n'*}
  printf '%s' "${out:-unknown}"
}

# state_json ACTIVE HEALTHY(0|1): {"active":…,"healthy":…}
state_json() {
  bpcs_obj active "$(bpcs_json_str "$1")" healthy "$(bpcs_bool "$2")"
}

before_active=$(unit_active)
before_healthy=0
if health_ok; then before_healthy=1; fi
before=$(state_json "$before_active" "$before_healthy")
health_word=failing
if ((before_healthy)); then health_word=ok; fi
bpcs_log INFO "before: $service is $before_active, $health_command $health_word"

if bpcs_dry_run; then
  plan=$(bpcs_arr \
    "$(bpcs_json_str "systemctl restart -- $service")" \
    "$(bpcs_json_str "every 1s for up to ${verify_timeout}s: systemctl is-active -- $service; $health_command")")
  data=$(bpcs_obj service "$(bpcs_json_str "$service")" plan "$plan" before "$before")
  bpcs_finish ok "dry run: would restart $service (now $before_active) and wait up to ${verify_timeout}s for health" \
    false "$data"
fi

# Leave room to report before RUNE's own timeout (exit 124, no result) ends the run.
restart_budget=$((run_timeout - SECONDS - 10))
if ((restart_budget < 5)); then restart_budget=5; fi
bpcs_log INFO "systemctl restart -- $service"
restart_exit=0
timeout --foreground "$restart_budget" systemctl restart -- "$service" </dev/null >&2 || restart_exit=$?

wait_budget=$verify_timeout
remaining=$((run_timeout - SECONDS - 15))
if ((remaining < 0)); then remaining=0; fi
if ((wait_budget > remaining)); then
  bpcs_log WARN "verify_timeout ${verify_timeout}s capped to ${remaining}s by the run timeout (${run_timeout}s)"
  wait_budget=$remaining
fi

wait_start=$SECONDS
while :; do
  after_active=$(unit_active)
  after_healthy=0
  if health_ok; then after_healthy=1; fi
  if [[ $after_active == active ]] && ((after_healthy)); then break; fi
  # A failed restart is not waited for: report the state it left right away.
  if ((restart_exit != 0 || SECONDS - wait_start >= wait_budget)); then break; fi
  sleep 1
done
waited_s=$((SECONDS - wait_start))
after=$(state_json "$after_active" "$after_healthy")

data=$(bpcs_obj \
  service "$(bpcs_json_str "$service")" \
  before "$before" \
  after "$after" \
  restart_exit "$restart_exit" \
  waited_s "$waited_s" \
  verify_timeout_s "$wait_budget")

health_word=failing
if ((after_healthy)); then health_word=ok; fi
if ((restart_exit != 0)); then
  changed=false
  if [[ $after_active != "$before_active" ]]; then changed=true; fi
  how="exit $restart_exit"
  if ((restart_exit == 124)); then how="no answer within ${restart_budget}s; the restart job may still be running"; fi
  bpcs_finish error "systemctl restart $service failed ($how); now $after_active, $health_command $health_word" \
    "$changed" "$data"
fi
if [[ $after_active == active ]] && ((after_healthy)); then
  bpcs_finish ok "restarted $service; active and healthy after ${waited_s}s" true "$data"
fi
bpcs_finish error "restarted $service but not healthy within ${wait_budget}s: is-active $after_active, $health_command $health_word" \
  true "$data"
