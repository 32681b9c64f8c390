# RUNE runner (BPCS v0.1): unpacks one plugin run into a private temp dir on the target and runs it under a timeout.
# Generated per run by src/mediator.rs. Every placeholder (a name between two at-signs) becomes a number, a UUID, a validated name, or a
# printf %b literal: single-quoted text holding no quote and no backslash other than \xHH escapes, decoded by
# the printf builtin straight into a file or a variable. No caller data is ever parsed by this shell as code,
# and decoding forks nothing. The boot command (src/mediator.rs) creates the private run dir
# $TMPDIR/rune-<run id> (mkdir fails if the path exists: nobody can plant it), writes its pid there, stores this
# program as runner.sh in it and execs bash on it. Everything sits in a function, so bash has parsed the whole
# program before any of it runs. The run itself is rune_exec (src/exec.sh), shared with the installed runner.
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
  export RUNE_DRY_RUN=@DRY_RUN@ RUNE_LIB="$rune_dir/lib" RUNE_INPUT="$rune_dir/input.json" RUNE_PLUGIN="$rune_dir/plugin.sh"
@ENV_VARS@
  rune_exec "$rune_dir/plugin.sh" @TIMEOUT@ @KILL_AFTER@ @RUN_ID@ @NEEDS_ROOT@ @REQUIRES@
}
rune_main </dev/null
