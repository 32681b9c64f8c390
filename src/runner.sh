# RUNE runner (BPCS v0.1): unpacks one plugin run into a private temp dir on the target and runs it under a timeout.
# Generated per run by src/mediator.rs. Every placeholder (a name between two at-signs) becomes a number, a UUID, a validated name, or a
# printf %b literal: single-quoted text holding no quote and no backslash other than \xHH escapes, decoded by
# the printf builtin straight into a file or a variable. No caller data is ever parsed by this shell as code,
# and decoding forks nothing. The boot command (src/mediator.rs) creates the private run dir
# $TMPDIR/rune-<run id> (mkdir fails if the path exists: nobody can plant it), writes its pid there, stores this
# program as runner.sh in it and execs bash on it. Everything sits in a function, so bash has parsed the whole
# program before any of it runs.
rune_fail() { printf 'rune-runner: %s\n' "$1" >&2; exit 125; }
rune_main() {
  # First line on stdout: RUNE drops anything a login shell printed before it, and knows the runner started.
  printf 'rune-runner-start @RUN_ID@\n'
  set -u
  umask 077
  rune_dir="${TMPDIR:-/tmp}/rune-@RUN_ID@"
  [ -d "$rune_dir" ] && [ -O "$rune_dir" ] && [ "$0" = "$rune_dir/runner.sh" ] || rune_fail "not started by the RUNE boot command"
  trap 'rm -rf -- "$rune_dir"' EXIT
  [ "@SWEEP_STALE@" = 1 ] && rune_sweep_stale
@PUT_FILES@
  local missing="" c
  for c in timeout @REQUIRES@; do
    command -v -- "$c" >/dev/null 2>&1 || missing="$missing${missing:+,}\"$c\""
  done
  if [ -n "$missing" ]; then
    printf 'rune-runner: required commands missing on this host: %s\n' "$missing" >&2
    printf '{"rune_runner":"requires_missing","missing":[%s]}\n' "$missing"
    exit 121
  fi
  if [ "@NEEDS_ROOT@" = 1 ] && [ "$EUID" != 0 ]; then
    printf 'rune-runner: plugin needs root and runs as uid %s\n' "$EUID" >&2
    exit 122
  fi
  # The plugin's bash must not source a start-up file chosen by the host's environment.
  unset BASH_ENV ENV
  export RUNE_BPCS=0.1 RUNE_RUN_ID=@RUN_ID@ RUNE_DRY_RUN=@DRY_RUN@ RUNE_TIMEOUT=@TIMEOUT@
  export RUNE_LIB="$rune_dir/lib" RUNE_INPUT="$rune_dir/input.json" RUNE_PLUGIN="$rune_dir/plugin.sh"
@ENV_VARS@
  cd -- "$rune_dir" || rune_fail "cannot enter $rune_dir"
  SECONDS=0
  rune_pid_mark
  # stdout and stderr go straight to RUNE, which caps them and ends the session when a plugin floods.
  timeout --kill-after=@KILL_AFTER@ @TIMEOUT@ bash --noprofile --norc "$rune_dir/plugin.sh" <"$rune_dir/input.json" &
  local tpid=$! rc
  printf '%s\n' "$tpid" >"$rune_dir/pgid"
  wait "$tpid"
  rc=$?
  # Whatever the plugin left running goes with it, whether it ended well or not: its process group, the rest of
  # this session, and what carries this run's id in its environment (a daemon that left the session). After 10 s
  # pids may have wrapped since the mark: then every process is looked at.
  [ "$SECONDS" -lt 10 ] || rune_mark=''
  rune_sweep "RUNE_RUN_ID=@RUN_ID@" "$rune_mark" "$tpid"
  kill -KILL -- "-$tpid" 2>/dev/null
  if { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && [ "$SECONDS" -ge @TIMEOUT@ ]; then
    printf 'rune-runner: timed out after %ss; process group %s and the rest of the session killed\n' "$SECONDS" "$tpid" >&2
    rc=124
  elif [ "$rc" -ge 120 ] && [ "$rc" -le 127 ]; then
    printf 'rune-runner: the plugin exited with code %s, reserved for the runner (127: a command not found?)\n' "$rc" >&2
    rc=120
  fi
  exit "$rc"
}
rune_main </dev/null
