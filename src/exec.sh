# RUNE plugin execution (BPCS v0.1): shared by the runner RUNE sends with each run (src/runner.sh) and the runner
# installed on a host for `sudo: installed` (src/installed.sh). RUNE puts this text, after src/sweep.sh, in
# front of either program. The caller has made the private run dir $rune_dir (holding input.json), exported the
# run's RUNE_* variables (RUNE_DRY_RUN, RUNE_LIB, RUNE_INPUT, RUNE_PLUGIN, RUNE_HOST, RUNE_ACTION,
# RUNE_CORRELATION_ID, RUNE_ARG_*) and set its EXIT trap.
# rune_exec PLUGIN_FILE TIMEOUT KILL_AFTER RUN_ID NEEDS_ROOT [REQUIRED_COMMAND...]: checks the required commands
# and root, runs the plugin under the timeout, sweeps what it left, and exits with its code (120..=127 are the
# runner's: see src/bpcs.rs, runner_exit).
rune_exec() {
  local plugin=$1 timeout=$2 kill_after=$3 run_id=$4 needs_root=$5
  shift 5
  local missing="" c
  for c in timeout "$@"; do
    command -v -- "$c" >/dev/null 2>&1 || missing="$missing${missing:+,}\"$c\""
  done
  if [ -n "$missing" ]; then
    printf 'rune-runner: required commands missing on this host: %s\n' "$missing" >&2
    printf '{"rune_runner":"requires_missing","missing":[%s]}\n' "$missing"
    exit 121
  fi
  if [ "$needs_root" = 1 ] && [ "$EUID" != 0 ]; then
    printf 'rune-runner: plugin needs root and runs as uid %s\n' "$EUID" >&2
    exit 122
  fi
  # The plugin's bash must not source a start-up file chosen by the host's environment.
  unset BASH_ENV ENV
  export RUNE_BPCS=0.1 RUNE_RUN_ID="$run_id" RUNE_TIMEOUT="$timeout"
  cd -- "$rune_dir" || rune_fail "cannot enter $rune_dir"
  SECONDS=0
  rune_pid_mark
  # stdout and stderr go straight to RUNE, which caps them and ends the session when a plugin floods.
  timeout --kill-after="$kill_after" "$timeout" bash --noprofile --norc "$plugin" <"$rune_dir/input.json" &
  local tpid=$! rc
  printf '%s\n' "$tpid" >"$rune_dir/pgid"
  wait "$tpid"
  rc=$?
  # Whatever the plugin left running goes with it, whether it ended well or not: its process group, the rest of
  # this session, and what carries this run's id in its environment (a daemon that left the session). After 10 s
  # pids may have wrapped since the mark: then every process is looked at.
  [ "$SECONDS" -lt 10 ] || rune_mark=''
  rune_sweep "RUNE_RUN_ID=$run_id" "$rune_mark" "$tpid"
  kill -KILL -- "-$tpid" 2>/dev/null
  if { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && [ "$SECONDS" -ge "$timeout" ]; then
    printf 'rune-runner: timed out after %ss; process group %s and the rest of the session killed\n' "$SECONDS" "$tpid" >&2
    rc=124
  elif [ "$rc" -ge 120 ] && [ "$rc" -le 127 ]; then
    printf 'rune-runner: the plugin exited with code %s, reserved for the runner (127: a command not found?)\n' "$rc" >&2
    rc=120
  fi
  exit "$rc"
}
