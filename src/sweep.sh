# RUNE sweeps (BPCS v0.1): shared by the runner (src/runner.sh) and the session shell (src/session.sh); RUNE
# puts this text in front of either program. Builtins only unless there is something to kill or remove.
# rune_sweep: kill every process left in this shell's session (after a timeout), including processes that moved
# to another process group (a nested `timeout` without --foreground, `set -m`). The runner and the session shell
# lead their session (sshd starts each channel as one; the local transport uses setsid); spared are the shell
# itself, its parent and the session shell's watchdog.
rune_sweep() {
  local sid stat p pid fields
  # Whole file (-d ''): a process name may hold a newline. read returns 1 at EOF, hence the -n test.
  read -r -d '' stat </proc/$$/stat || [ -n "$stat" ] || return 0
  read -ra fields <<<"${stat##*) }"
  sid=${fields[3]-}
  [ "$sid" = "$$" ] || [ "$sid" = "$PPID" ] || return 0
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = "$$" ] || [ "$pid" = "$PPID" ] || [ "$pid" = "${rune_wd-}" ] && continue
    stat=''
    read -r -d '' stat <"$p/stat" 2>/dev/null || [ -n "$stat" ] || continue
    read -ra fields <<<"${stat##*) }"
    [ "${fields[3]-}" = "$sid" ] && kill -KILL "$pid" 2>/dev/null
  done
  return 0
}
# rune_sweep_stale: remove run and session dirs of ours whose shell is gone (killed); dirs without a pid file
# (just starting) and dirs whose plugin group still lives are left alone.
rune_sweep_stale() {
  local d pid pgid
  for d in "${TMPDIR:-/tmp}"/rune-*/; do
    d=${d%/}
    [ -O "$d" ] && [ -f "$d/pid" ] || continue
    read -r pid <"$d/pid" 2>/dev/null || continue
    [[ $pid =~ ^[0-9]+$ ]] || continue
    kill -0 "$pid" 2>/dev/null && continue
    # The shell is gone; its plugin may not be (the shell was SIGKILLed): leave the dir while that group lives.
    pgid=''
    [ -f "$d/pgid" ] && read -r pgid <"$d/pgid" 2>/dev/null
    [[ $pgid =~ ^[0-9]+$ ]] && kill -0 -- "-$pgid" 2>/dev/null && continue
    rm -rf -- "$d"
  done
  return 0
}
