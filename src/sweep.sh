# RUNE sweeps (BPCS v0.1): shared by the runner (src/runner.sh) and the session shell (src/session.sh); RUNE
# puts this text in front of either program. Builtins only unless there is something to kill or remove.
# rune_pid_mark: stores in rune_mark the pid the kernel handed out last (fifth field of /proc/loadavg), taken just
# before a plugin starts: every process of the run gets a later pid (until pids wrap), so the sweep after the run
# can look at those pids only.
rune_pid_mark() {
  rune_mark=''
  { read -r _ _ _ _ rune_mark </proc/loadavg; } 2>/dev/null
  [[ -n $rune_mark && $rune_mark != *[!0-9]* ]] || rune_mark=''
}
# rune_kill_left SID MARKER [MARK [FIRST]]: kills every process of session SID (when not empty) and every process
# whose environment holds the exact entry MARKER; spared are this shell, its parent and the session shell's
# watchdog. Environments are readable for processes of our own uid only (every process's as root).
# With MARK (from rune_pid_mark) only pids handed out since are looked at while there are at most 4,096 of them
# and FIRST (a pid the run got after the mark) is among them, so a /proc/loadavg that does not tell the truth (a
# container's, virtualised) cannot hide a leftover; otherwise every process. Rounds repeat on the pids handed out
# meanwhile until one finds nothing (a leftover that forks). A process in the middle of an exec shows an empty
# environment for a moment: one that leads its own session or was orphaned is looked at again, up to 20 times 10 ms
# apart (others cannot have left the run's session, or are another run's).
# Sets rune_killed (a count) and rune_killed_names (`pid (name)` of the first five).
rune_kill_left() {
  local sid=$1 marker=$2 from=${3-} first=${4-} to p pid stat rest ppid env round n waits=0
  local -a list entries retry=() again
  rune_killed=0 rune_killed_names=''
  for ((round = 0; round < 100; round++)); do
    to=''
    { read -r _ _ _ _ to </proc/loadavg; } 2>/dev/null
    if [[ -n $from && $from != *[!0-9]* && -n $to && $to != *[!0-9]* && $first != *[!0-9]* ]] &&
      ((to >= from && to - from <= 4096)) && { [ -z "$first" ] || ((first > from && first <= to)); }; then
      list=("${retry[@]}")
      for ((pid = from + 1; pid <= to; pid++)); do list+=("/proc/$pid"); done
    else
      list=(/proc/[0-9]*)
    fi
    n=0 again=()
    for p in "${list[@]}"; do
      pid=${p#/proc/}
      [ "$pid" = "$$" ] || [ "$pid" = "$PPID" ] || [ "$pid" = "${rune_wd-}" ] && continue
      # Whole file (-d ''): a process name may hold a newline. read returns 1 at EOF, hence the -n test.
      stat=''
      { read -r -d '' stat <"$p/stat"; } 2>/dev/null || [ -n "$stat" ] || continue
      # After the name (at most 15 bytes, so within the first 96 of the line): state ppid pgrp session …, split by
      # expansions (a here-string costs a pipe per process, and matching the whole line is slow).
      rest=${stat:0:96} rest=${rest##*) }
      # A zombie is dead already; its parent has not reaped it yet.
      [ "${rest%% *}" = Z ] && continue
      rest=${rest#* } ppid=${rest%% *} rest=${rest#* } rest=${rest#* }
      if [ -z "$sid" ] || [ "${rest%% *}" != "$sid" ]; then
        { mapfile -d '' -t entries <"$p/environ"; } 2>/dev/null || continue
        if ((${#entries[@]} == 0)); then
          # Mid-exec, or a kernel thread (kthreadd's children), which never has one. Only a process that can
          # have left the run's session is worth waiting for: one that leads a session of its own (setsid) or
          # was orphaned (a double fork). Another run's processes mid-exec are neither, so a busy host does not
          # keep the sweep waiting for them.
          [ "$ppid" = 2 ] || [ "$pid" = 2 ] && continue
          [ "$ppid" = 1 ] || [ "${rest%% *}" = "$pid" ] && again+=("$p")
          continue
        fi
        printf -v env '\n%s' "${entries[@]}"
        [[ $env$'\n' == *$'\n'"$marker"$'\n'* ]] || continue
      fi
      kill -KILL "$pid" 2>/dev/null || continue
      n=$((n + 1))
      if ((rune_killed + n <= 5)); then
        stat=${stat#*(}
        rune_killed_names="$rune_killed_names${rune_killed_names:+, }$pid (${stat%)*})"
      fi
    done
    rune_killed=$((rune_killed + n))
    retry=("${again[@]}")
    if ((n == 0)); then
      ((${#retry[@]} && waits < 20)) || break
      waits=$((waits + 1))
      sleep 0.01
    fi
    from=$to first=''
  done
  return 0
}
# rune_sweep MARKER [MARK [FIRST]]: after a run, kills every process it left behind: every process of this shell's
# session, including ones that moved to another process group (a nested `timeout` without --foreground,
# `set -m`), and every process whose environment holds MARKER (the run's RUNE_RUN_ID=<run id>), including ones
# that started a session of their own (`setsid`, `nohup … &` + `disown`, a double fork). The session counts
# only when this shell or its parent leads it: the runner and the session shell do (sshd starts each channel as
# one; the local transport and the SSM wrapper use setsid). Says on stderr what it killed. MARK, FIRST: rune_kill_left.
rune_sweep() {
  local sid='' stat=''
  if { read -r -d '' stat </proc/$$/stat; } 2>/dev/null || [ -n "$stat" ]; then
    sid=${stat:0:96} sid=${sid##*) } sid=${sid#* } sid=${sid#* } sid=${sid#* } sid=${sid%% *}
    [ "$sid" = "$$" ] || [ "$sid" = "$PPID" ] || sid=''
  fi
  rune_kill_left "$sid" "$1" "${2-}" "${3-}"
  if ((rune_killed)); then
    printf 'rune-runner: killed %s process(es) the plugin left running: %s\n' "$rune_killed" "$rune_killed_names" >&2
  fi
  return 0
}
# rune_sweep_stale: remove run and session dirs of ours whose shell is gone (killed); dirs without a pid file
# (just starting) and dirs whose plugin group still lives are left alone. What the dead shell's runs left
# running (they carry RUNE_LIB=<that dir>/lib in their environment) is killed first.
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
    rune_kill_left '' "RUNE_LIB=$d/lib"
    rm -rf -- "$d"
  done
  return 0
}
