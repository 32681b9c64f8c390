# restart.sh — shared body of the restart-* plugins: restart one systemd unit, then wait until it is active and
# healthy, and report before/after state as one BPCS result. Honours dry run (reports the plan, changes nothing).
# shellcheck shell=bash
#
# The plugin defines, then calls restart_unit_and_verify PATTERN ALLOWED:
#   default_service   unit restarted when the `service` argument is absent
#   health_command    words describing the health check, for summaries and the dry-run plan
#   health_ok         function: status 0 when the service answers (bounded, `timeout --foreground`)
# PATTERN is the regex the unit name must match (the same as the header's); ALLOWED says it in words.
# Arguments read: RUNE_ARG_service, RUNE_ARG_verify_timeout; RUNE_TIMEOUT bounds the waiting.

# reject MESSAGE: the input is unusable (RUNE validates first; this guards manual runs). Exit 2 per BPCS.
reject() {
  (bpcs_finish error "$1" false '{}') || true
  exit 2
}

# shellcheck disable=SC2154 # default_service and health_command are set by the plugin
restart_unit_and_verify() {
  local service_pattern=$1 service_allowed=$2
  service=${RUNE_ARG_service-$default_service}
  verify_timeout=${RUNE_ARG_verify_timeout-60}
  if [[ ! $service =~ $service_pattern ]]; then
    reject "invalid service name (allowed: $service_allowed; never an arbitrary unit)"
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
}
