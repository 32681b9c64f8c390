# RUNE installed runner (BPCS v0.1), for hosts with `sudo: installed` in the inventory. `rune plugin bundle`
# writes it as <dir>/run (after a line setting rune_base=<dir>, src/sweep.sh and src/exec.sh: the dir is fixed
# when bundled, since sudo runs a command pinned by digest as /dev/fd/N), next to <dir>/lib/*.sh and
# <dir>/plugins/*.sh;
# root owns all of it, and the sudoers drop-in of the bundle allows RUNE's user exactly
#   sudo -n <dir>/run <plugin name>      one line per root plugin
#   sudo -n <dir>/run --cleanup          ends a run RUNE gave up on (run id on stdin)
# so RUNE's user gets root for those plugins' code and nothing else. The caller is untrusted here: everything it
# sends is checked before use. The request comes on stdin, one field per line; values are printf %b literals
# (no backslash but \xHH escapes, no newline), decoded by the printf builtin into variables, never parsed as code:
#   run RUN_ID PLUGIN_SHA256 TIMEOUT KILL_AFTER DRY_RUN SWEEP_STALE
#   requires [COMMAND...]
#   var NAME LITERAL          NAME: RUNE_HOST, RUNE_ACTION, RUNE_CORRELATION_ID or RUNE_ARG_<arg name>
#   input LITERAL             the BPCS input document
#   end
# The plugin runs from a copy in a private run dir, /tmp/rune-<run id>, after the copy's sha256 was found equal
# to the one RUNE expects (the same file RUNE has), so RUNE never runs a plugin other than the one it asked for.
rune_fail() { printf 'rune-runner: %s\n' "$1" >&2; exit 125; }
rune_uuid='^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
# rune_cleanup: the run whose id is on stdin is over for RUNE (its client-side deadline passed): kill what carries
# its id, and remove its dir once its runner is gone (a live runner removes it itself when its plugin ends).
rune_cleanup() {
  local id='' pid=''
  read -r -t 10 id || [ -n "$id" ] || rune_fail "no run id on stdin"
  [[ $id =~ $rune_uuid ]] || rune_fail "not a run id"
  rune_kill_left '' "RUNE_RUN_ID=$id"
  local d="/tmp/rune-$id"
  if [ -d "$d" ] && [ -O "$d" ]; then
    [ -f "$d/pid" ] && read -r pid <"$d/pid"
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || rm -rf -- "$d"
  fi
  exit 0
}
rune_main() {
  set -u
  umask 077
  unset TMPDIR BASH_ENV ENV
  local base=$rune_base name=${1-}
  [ $# = 1 ] || rune_fail "usage: run PLUGIN_NAME | run --cleanup"
  [ "$name" = --cleanup ] && rune_cleanup
  [[ $name =~ ^[a-z0-9][a-z0-9-]{0,62}$ ]] || rune_fail "not a plugin name"
  local installed="$base/plugins/$name.sh"
  local line word run_id sha timeout kill_after dry sweep lit input='' ended=0 lines=0
  local -a requires=() vars=()
  read -r -t 30 word run_id sha timeout kill_after dry sweep || rune_fail "no request on stdin"
  [ "$word" = run ] && [[ $run_id =~ $rune_uuid ]] && [[ $sha =~ ^[0-9a-f]{64}$ ]] &&
    [[ $timeout =~ ^[1-9][0-9]{0,5}$ ]] && [[ $kill_after =~ ^[1-9][0-9]{0,2}$ ]] &&
    [[ $dry =~ ^[01]$ ]] && [[ $sweep =~ ^[01]$ ]] || rune_fail "malformed run line"
  # First line on stdout: RUNE drops anything a login shell printed before it, and knows the runner started.
  printf 'rune-runner-start %s\n' "$run_id"
  while ((lines++ < 1100)) && IFS= read -r -t 30 line; do
    case $line in
      'requires '*)
        read -r -a requires <<<"${line#requires }"
        for word in "${requires[@]}"; do
          [[ $word =~ ^[A-Za-z0-9_][A-Za-z0-9._+-]{0,63}$ ]] || rune_fail "not a command name in requires"
        done ;;
      'var '*)
        line=${line#var }
        word=${line%% *} lit=${line#* }
        [[ $word =~ ^RUNE_(HOST|ACTION|CORRELATION_ID|ARG_[a-z][a-z0-9_]{0,62})$ ]] && [ "$lit" != "$line" ] ||
          rune_fail "malformed var line"
        vars+=("$word" "$lit") ;;
      'input '*) input=${line#input } ;;
      end) ended=1; break ;;
      *) rune_fail "unknown request line" ;;
    esac
  done
  ((ended)) && [ -n "$input" ] || rune_fail "incomplete request"
  [ -f "$installed" ] && [ -O "$installed" ] || {
    printf 'rune-runner: plugin %s is not installed in %s\n' "$name" "$base/plugins" >&2
    printf '{"rune_runner":"not_installed","path":"%s"}\n' "$installed"
    exit 123
  }
  rune_dir="/tmp/rune-$run_id"
  mkdir -m 700 -- "$rune_dir" || rune_fail "cannot make the run dir"
  printf '%s\n' "$$" >"$rune_dir/pid"
  trap 'rm -rf -- "$rune_dir"' EXIT
  ((sweep)) && rune_sweep_stale
  # The plugin's libraries by link (RUNE_LIB=<run dir>/lib marks the run's processes for the stale sweep).
  ln -s -- "$base/lib" "$rune_dir/lib" || rune_fail "cannot link the libraries"
  cat -- "$installed" >"$rune_dir/plugin.sh" || rune_fail "cannot copy the plugin"
  local got
  got=$(sha256sum -- "$rune_dir/plugin.sh") || rune_fail "cannot hash the plugin (sha256sum)"
  got=${got%% *}
  if [ "$got" != "$sha" ]; then
    printf 'rune-runner: %s has sha256 %s, RUNE runs %s\n' "$installed" "$got" "$sha" >&2
    printf '{"rune_runner":"installed_differs","path":"%s","sha256":"%s"}\n' "$installed" "$got"
    exit 123
  fi
  printf '%b' "$input" >"$rune_dir/input.json" || rune_fail "cannot write input.json"
  export RUNE_DRY_RUN="$dry" RUNE_LIB="$rune_dir/lib" RUNE_INPUT="$rune_dir/input.json" RUNE_PLUGIN="$rune_dir/plugin.sh"
  local i
  for ((i = 0; i < ${#vars[@]}; i += 2)); do
    printf -v "${vars[i]}" '%b' "${vars[i + 1]}" && export "${vars[i]}"
  done
  rune_exec "$rune_dir/plugin.sh" "$timeout" "$kill_after" "$run_id" 1 "${requires[@]}"
}
rune_main "$@"
