# RUNE session shell (BPCS v0.1): lives on one pooled SSH session channel and runs plugin runs one after
# another, so a warm run costs no new SSH session, no login shell, no temp dir and no coreutils process: one
# fork of this shell, in which the plugin is sourced (see rune_run). Sent once per channel by
# src/transport/session.rs.
#
# The boot command (src/transport/session.rs) makes the private dir $TMPDIR/rune-s-<session id> with `lib`
# and `work` in it (mkdir fails on an existing path: nobody can plant one), writes its pid there, reads this
# program (a byte count on one line, then the bytes) and evals it; everything is in functions, so bash has
# parsed the whole program before any of it runs.
#
# Requests follow on stdin in the same framing. A request is program text built by src/mediator.rs from fixed
# words, numbers, validated names and printf %b literals (single-quoted, holding no quote and no backslash but
# \xHH escapes), decoded only by the printf builtin: no caller data is ever parsed by this shell as code. A
# request puts the files the session lacks, sets the run's RUNE_* variables and ends with one rune_run call.
#
# Output framing: every run prints `rune-run-start <run id>` first on stdout, then the plugin's stdout and
# stderr pass straight through (RUNE caps them), then `rune-run-end <nonce> <exit code, 3 digits>` ends both
# streams. The nonce is random per run and only in this shell's memory, never in the plugin's environment.
rune_fail() { printf 'rune-session: %s\n' "$1" >&2; exit 125; }
# rune_put PATH LITERAL: a file of the session dir (PATH is a validated relative name). The BPCS helpers are
# loaded here once (they change no option, trap or fd), so each run's fork has them and the plugin's own
# `. "$RUNE_LIB/bpcs.sh"` returns at once (bpcs.sh checks that it was loaded from that same path).
rune_put() {
  printf '%b' "$2" >"$rune_dir/$1" || rune_fail "cannot write $1"
  if [ "$1" = lib/bpcs.sh ]; then
    unset -v _bpcs_loaded
    . "$rune_dir/lib/bpcs.sh" || rune_fail "cannot load lib/bpcs.sh"
  fi
}
# rune_var NAME LITERAL: one exported RUNE_* variable of the next run (NAME is a validated identifier).
rune_var() { printf -v "$1" '%b' "$2" && export "$1"; }
# rune_reset: forget the previous run's variables before a request sets this run's.
rune_reset() {
  local v
  for v in ${!RUNE_@}; do unset "$v"; done
  unset BASH_ENV ENV
}
# rune_watchdog: a background job of this shell that ends runs which overrun their timeout. It sleeps in
# `read -t` on the FIFO (a builtin: no sleep process); rune_run writes `arm PGID TIMEOUT KILL_AFTER RUN_ID`
# before a run and `disarm` after it. At the timeout it records the run id in `fired`, TERMs the group, and KILLs
# it KILL_AFTER seconds later unless disarmed. It leaves when this shell is gone.
rune_watchdog() {
  local cmd g t k id
  while :; do
    if ! read -r -t 10 cmd g t k id <&9; then
      kill -0 "$$" 2>/dev/null || exit 0
      continue
    fi
    [ "$cmd" = arm ] || continue
    read -r -t "$t" cmd <&9 && continue
    printf '%s\n' "$id" >"$rune_dir/fired"
    kill -TERM -- "-$g" 2>/dev/null
    read -r -t "$k" cmd <&9 || kill -KILL -- "-$g" 2>/dev/null
  done
}
rune_start_watchdog() {
  rune_watchdog </dev/null >/dev/null 2>&1 &
  rune_wd=$!
}
# rune_run RUN_ID NONCE PLUGIN_FILE TIMEOUT KILL_AFTER NEEDS_ROOT SWEEP_STALE [REQUIRED_COMMAND...]
rune_run() {
  local id=$1 nonce=$2 plugin=$3 t=$4 k=$5 root=$6 stale=$7 rc c missing='' pid fired='' left t0
  shift 7
  printf 'rune-run-start %s\n' "$id"
  [ "$stale" = 1 ] && rune_sweep_stale
  for c in "$@"; do
    command -v -- "$c" >/dev/null 2>&1 || missing="$missing${missing:+,}\"$c\""
  done
  if [ -n "$missing" ]; then
    printf 'rune-runner: required commands missing on this host: %s\n' "$missing" >&2
    printf '{"rune_runner":"requires_missing","missing":[%s]}\n' "$missing"
    rc=121
  elif [ "$root" = 1 ] && [ "$EUID" != 0 ]; then
    printf 'rune-runner: plugin needs root and runs as uid %s\n' "$EUID" >&2
    rc=122
  else
    # Every run starts in an empty private working dir; globbing is a builtin, so only a plugin that left files
    # behind costs an rm and a mkdir.
    left=("$rune_dir"/work/*)
    if ((${#left[@]})); then
      rm -rf -- "$rune_dir/work" && mkdir -m 700 -- "$rune_dir/work" || rune_fail "cannot empty the working dir"
    fi
    kill -0 "$rune_wd" 2>/dev/null || rune_start_watchdog
    export RUNE_BPCS=0.1 RUNE_RUN_ID="$id" RUNE_TIMEOUT="$t" RUNE_LIB="$rune_dir/lib" RUNE_INPUT="$rune_dir/input.json"
    export RUNE_PLUGIN="$rune_dir/$plugin"
    t0=$SECONDS
    rune_pid_mark
    # The plugin runs in a fork of this shell (a job: its own process group) that first sheds this shell's
    # state: its variables (the nonce among them), options, traps and the watchdog's FIFO. Its rune_* functions
    # stay defined (code, no data; unsetting them costs copy-on-write faults on every run). Sourcing the plugin
    # there spares a bash start per run; BPCS plugins are bash scripts, so that is what they get.
    (
      exec 9>&- <"$RUNE_INPUT"
      cd -- "$rune_dir/work" || exit 125
      trap - PIPE
      set +m
      shopt -u nullglob dotglob
      unset -v id nonce plugin t k root stale rc c missing pid fired left t0 n req rune_dir rune_wd rune_mark \
        rune_killed rune_killed_names
      . "$RUNE_PLUGIN"
    ) &
    pid=$!
    printf '%s\n' "$pid" >"$rune_dir/pgid"
    printf 'arm %s %s %s %s\n' "$pid" "$t" "$k" "$id" >&9
    # With job control on, bash reports the finished job ("[2]+  Done  ( exec 9>&- ... )") from `wait`, on this
    # shell's stderr, which is the run's: silenced here, or every run's stderr_tail carries it.
    wait "$pid" 2>/dev/null
    rc=$?
    # Whatever the plugin left running goes with it, whether it ended well or not: its process group, the rest of
    # this session (but this shell and its watchdog), and what carries this run's id in its environment (a daemon
    # that left the session). Only pids handed out since the mark are looked at, unless the run took 10 s or more
    # (pids may have wrapped since).
    ((SECONDS - t0 < 10)) || rune_mark=''
    rune_sweep "RUNE_RUN_ID=$id" "$rune_mark" "$pid"
    kill -KILL -- "-$pid" 2>/dev/null
    printf 'disarm\n' >&9
    [ -f "$rune_dir/fired" ] && read -r fired <"$rune_dir/fired"
    if [ "$fired" = "$id" ]; then
      printf 'rune-runner: timed out after %ss; process group %s and the rest of the session killed\n' "$t" "$pid" >&2
      rc=124
    elif [ "$rc" -ge 120 ] && [ "$rc" -le 127 ]; then
      printf 'rune-runner: the plugin exited with code %s, reserved for the runner (127: a command not found?)\n' "$rc" >&2
      rc=120
    fi
  fi
  printf 'rune-run-end %s %03d\n' "$nonce" "$rc"
  printf 'rune-run-end %s %03d\n' "$nonce" "$rc" >&2
}
rune_session() {
  # The boot's variables: the program's length and text.
  unset -v n p
  local n req
  # A lost connection must not kill this shell by SIGPIPE half-way: it reads EOF next and exits cleanly.
  trap '' PIPE
  mkfifo -m 600 -- "$rune_dir/wd" && exec 9<>"$rune_dir/wd" || rune_fail "cannot make the watchdog FIFO"
  shopt -s nullglob dotglob
  set -m
  rune_start_watchdog
  # Quietly: job control would report the watchdog's death on stderr.
  trap 'exec 2>/dev/null; kill -KILL "$rune_wd"; rm -rf -- "$rune_dir"' EXIT
  while IFS= read -r n; do
    [[ -n $n && ${#n} -le 9 && $n != *[!0-9]* ]] || rune_fail "bad request header"
    IFS= read -r -N "$n" req && [ "${#req}" = "$n" ] || rune_fail "short request"
    rune_reset
    eval "$req"
  done
  exit 0
}
