#!/usr/bin/env bash
# ---
# bpcs: "0.1"
# name: gather-logs
# version: 1.0.0
# description: Collects recent logs from the systemd journal, dmesg, running Docker containers and Nomad, capped in lines and total bytes. Uses only the sources present on the host.
# tags: [logs, diagnostic]
# class: diagnostic
# needs_root: false
# timeout: 120
# requires: []
# args:
#   since:
#     type: string
#     required: false
#     default: "1h"
#     pattern: "^[1-9][0-9]{0,5}[smhd]$"
#     description: How far back to read (s, m, h or d); dmesg has no portable time filter and ignores it
#   max_bytes:
#     type: integer
#     required: false
#     default: 262144
#     pattern: "^[1-9][0-9]{0,6}$"
#     description: Total cap on collected text across all sources, newest kept (at most 786432, so the result fits RUNE's 1 MiB limit)
#   lines:
#     type: integer
#     required: false
#     default: 500
#     pattern: "^[1-9][0-9]{0,4}$"
#     description: Line cap per source (per container for docker)
# ---
# gather-logs.sh — reads recent logs from whichever of journal, dmesg, docker and nomad exist and returns them as text.
#
# Every source is read with a time bound, reduced to JSON-safe text (no NUL or control chars except tab and
# newline, no ANSI colour codes, valid UTF-8), then the total budget is shared fairly: small sources keep all
# their text and big ones split the rest, each keeping its newest bytes (cut at a line start).
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib/bpcs.sh
. "$RUNE_LIB/bpcs.sh"

readonly hard_max_bytes=786432   # escaped text can grow; this keeps the result object under 1 MiB
readonly max_data_bytes=1000000  # what the data object may occupy before texts are cut further
readonly sources=(journal dmesg docker nomad)

# reject MESSAGE: the input is unusable (RUNE validates first; this guards manual runs). Exit 2 per BPCS.
reject() {
  (bpcs_finish error "$1" false '{}') || true
  exit 2
}

since=${RUNE_ARG_since-1h}
max_bytes=${RUNE_ARG_max_bytes-262144}
lines=${RUNE_ARG_lines-500}
[[ $since =~ ^[1-9][0-9]{0,5}[smhd]$ ]] || reject "invalid since '$since' (like 30m, 1h, 2d)"
[[ $max_bytes =~ ^[1-9][0-9]{0,6}$ ]] || reject "invalid max_bytes '$max_bytes'"
[[ $lines =~ ^[1-9][0-9]{0,4}$ ]] || reject "invalid lines '$lines'"
if ((max_bytes > hard_max_bytes)); then
  bpcs_log WARN "max_bytes $max_bytes capped to $hard_max_bytes"
  max_bytes=$hard_max_bytes
fi

amount=${since%?}
case ${since: -1} in
  s) journal_since="-${amount}s" docker_since="${amount}s" ;;
  m) journal_since="-${amount}min" docker_since="${amount}m" ;;
  h) journal_since="-${amount}h" docker_since="${amount}h" ;;
  d) journal_since="-${amount}d" docker_since="$((amount * 24))h" ;; # docker takes Go durations: no "d"
esac

run_timeout=${RUNE_TIMEOUT-120}
if [[ ! $run_timeout =~ ^[1-9][0-9]{0,5}$ ]]; then run_timeout=120; fi
deadline=$((run_timeout - 15)) # stop starting new reads here, leaving time to build the result

has() { command -v "$1" >/dev/null 2>&1; }

# set_budget: t = seconds the next command may take (at most 30, at least 1).
t=30
set_budget() {
  t=$((deadline - SECONDS))
  if ((t > 30)); then t=30; fi
  if ((t < 1)); then t=1; fi
}

# ---- dry run: say what would be read, read nothing ----
if bpcs_dry_run; then
  plan=()
  declare -A would=([journal]=0 [dmesg]=0 [docker]=0 [nomad]=0)
  if has journalctl; then
    would[journal]=1 would[nomad]=1
    plan+=("journalctl --since $journal_since -n $lines --no-pager -q -o short-iso")
    plan+=("journalctl -u nomad --since $journal_since -n $lines --no-pager -q -o short-iso")
  fi
  if has dmesg; then
    would[dmesg]=1
    plan+=("dmesg | tail -n $lines")
  fi
  if has docker; then
    would[docker]=1
    plan+=("docker ps --format {{.Names}}" "docker logs --since $docker_since --tail $lines <each running container>")
  fi
  if has nomad; then
    would[nomad]=1
    plan+=("nomad node status -self -short")
  fi
  plan_json=()
  for step in "${plan[@]}"; do plan_json+=("$(bpcs_json_str "$step")"); done
  sources_json=()
  for src in "${sources[@]}"; do sources_json+=("$src" "$(bpcs_obj available "$(bpcs_bool "${would[$src]}")")"); done
  data=$(bpcs_obj \
    since "$(bpcs_json_str "$since")" \
    max_bytes "$max_bytes" \
    lines "$lines" \
    plan "$(bpcs_arr "${plan_json[@]}")" \
    sources "$(bpcs_obj "${sources_json[@]}")")
  bpcs_finish ok "dry run: would read ${#plan[@]} command(s) of logs since $since" false "$data"
fi

# Under the run's private directory (the working directory), which the runner removes even after a timeout.
tmp=$(mktemp -d "$PWD/gather.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT

declare -A available=([journal]=0 [dmesg]=0 [docker]=0 [nomad]=0)
declare -A detail=([journal]='' [dmesg]='' [docker]='' [nomad]='')
containers=()

# first_line FILE: the first line of FILE (empty if none).
first_line() {
  local line=''
  IFS= read -r line <"$1" || true
  printf '%s' "$line"
}

collect_journal() {
  if ! has journalctl; then
    detail[journal]='journalctl not found'
    return
  fi
  set_budget
  if timeout --foreground "$t" journalctl --since "$journal_since" -n "$lines" --no-pager -q -o short-iso \
    </dev/null 2>"$tmp/journal.err" | tail -c "$max_bytes" >"$tmp/journal.raw"; then
    available[journal]=1
  else
    detail[journal]="journalctl failed: $(first_line "$tmp/journal.err")"
  fi
}

collect_dmesg() {
  if ! has dmesg; then
    detail[dmesg]='dmesg not found'
    return
  fi
  set_budget
  if timeout --foreground "$t" dmesg </dev/null 2>"$tmp/dmesg.err" | tail -n "$lines" | tail -c "$max_bytes" \
    >"$tmp/dmesg.raw"; then
    available[dmesg]=1
    detail[dmesg]='whole kernel ring buffer tail: since does not apply to dmesg'
  else
    detail[dmesg]="dmesg not readable: $(first_line "$tmp/dmesg.err")"
  fi
}

collect_docker() {
  if ! has docker; then
    detail[docker]='docker not found'
    return
  fi
  set_budget
  if ! timeout --foreground "$t" docker ps --format '{{.Names}}' </dev/null >"$tmp/docker.names" 2>"$tmp/docker.err"; then
    detail[docker]="docker ps failed: $(first_line "$tmp/docker.err")"
    return
  fi
  available[docker]=1
  local names=() name per skipped=0
  mapfile -t names <"$tmp/docker.names"
  if ((${#names[@]} == 0)); then
    detail[docker]='no running containers'
    : >"$tmp/docker.raw"
    return
  fi
  per=$((max_bytes / ${#names[@]}))
  if ((per < 1024)); then per=1024; fi
  for name in "${names[@]}"; do
    # docker container names: [a-zA-Z0-9][a-zA-Z0-9_.-]+ — anything else is not passed on as an argument.
    if [[ ! $name =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]]; then continue; fi
    if ((SECONDS >= deadline)); then
      skipped=$((skipped + 1))
      continue
    fi
    containers+=("$name")
    set_budget
    {
      printf '==> %s <==\n' "$name"
      timeout --foreground "$t" docker logs --since "$docker_since" --tail "$lines" "$name" </dev/null 2>&1 |
        tail -c "$per" || printf '(docker logs %s failed or timed out)\n' "$name"
    } >>"$tmp/docker.raw"
  done
  if ((skipped > 0)); then
    detail[docker]="$skipped container(s) skipped: out of time"
  fi
}

collect_nomad() {
  local found=0
  : >"$tmp/nomad.raw"
  if has journalctl; then
    set_budget
    if timeout --foreground "$t" journalctl -u nomad --since "$journal_since" -n "$lines" --no-pager -q -o short-iso \
      </dev/null 2>/dev/null | tail -c "$max_bytes" >"$tmp/nomad.journal" && [[ -s $tmp/nomad.journal ]] &&
      [[ $(first_line "$tmp/nomad.journal") != '-- No entries --' ]]; then
      found=1
      {
        printf '==> journalctl -u nomad <==\n'
        cat -- "$tmp/nomad.journal"
      } >>"$tmp/nomad.raw"
    fi
  fi
  if has nomad; then
    found=1
    set_budget
    {
      printf '==> nomad node status -self -short <==\n'
      timeout --foreground "$t" nomad node status -self -short </dev/null 2>&1 || printf '(failed or timed out)\n'
    } >>"$tmp/nomad.raw"
  fi
  if ((found)); then
    available[nomad]=1
  else
    detail[nomad]='no nomad unit journal entries and nomad not found'
  fi
}

# utf8_fix: stdin -> stdout as valid UTF-8. iconv -c alone lets code points above U+10FFFF through; a round
# trip via UTF-32 drops those too. Without a working iconv every non-ASCII byte becomes '?'.
if [[ $( (printf 'x\303\251' | iconv -f UTF-8 -t UTF-32LE | iconv -f UTF-32LE -t UTF-8) 2>/dev/null) == $'x\303\251' ]]; then
  utf8_fix() { { iconv -c -f UTF-8 -t UTF-32LE | iconv -c -f UTF-32LE -t UTF-8; } 2>/dev/null || true; }
else
  utf8_fix() { LC_ALL=C tr '\200-\377' '?'; }
fi

# sanitize: stdin -> stdout without ANSI escape sequences (when sed exists), NUL, or control chars other than
# tab and newline, as valid UTF-8.
sanitize() {
  if has sed; then
    LC_ALL=C sed "s#$(printf '\033')\\[[0-9;?]*[ -/]*[@-~]##g"
  else
    cat
  fi | LC_ALL=C tr -d '\000-\010\013-\037' | utf8_fix
}

collect_journal
collect_dmesg
collect_docker
collect_nomad

declare -A size=()
for src in "${sources[@]}"; do
  size[$src]=0
  if ((available[$src])) && [[ -f $tmp/$src.raw ]]; then
    sanitize <"$tmp/$src.raw" >"$tmp/$src.txt"
    size[$src]=$(wc -c <"$tmp/$src.txt")
  fi
done

# allocate BUDGET: alloc[src] = fair share of BUDGET bytes; sources smaller than their share keep everything and
# leave the rest to the others.
declare -A alloc=()
allocate() {
  local remaining=$1 left=0 src pick share
  declare -A given=()
  for src in "${sources[@]}"; do
    alloc[$src]=0
    if ((available[$src])); then left=$((left + 1)); fi
  done
  while ((left > 0)); do
    pick=''
    for src in "${sources[@]}"; do
      if ((available[$src])) && [[ -z ${given[$src]-} ]] && { [[ -z $pick ]] || ((size[$src] < size[$pick])); }; then
        pick=$src
      fi
    done
    share=$((remaining / left))
    alloc[$pick]=$((size[$pick] < share ? size[$pick] : share))
    remaining=$((remaining - alloc[$pick]))
    given[$pick]=1
    left=$((left - 1))
  done
}

byte_length() {
  local LC_ALL=C
  printf '%s' "${#1}"
}

declare -A bytes=() truncated=()
# build_data BUDGET: data = the result's data object with every source's text cut to its share of BUDGET.
build_data() {
  local src text json_sources=() total=0 extra
  allocate "$1"
  for src in "${sources[@]}"; do
    text='' truncated[$src]=0
    if ((available[$src])); then
      if ((size[$src] > alloc[$src])); then
        truncated[$src]=1
        text=$(tail -c "${alloc[$src]}" "$tmp/$src.txt" | utf8_fix; printf .)
        text=${text%.}
        # Keep whole lines: drop the first, cut one, if a later line remains.
        if [[ $text == *$'\n'?* ]]; then text=${text#*$'\n'}; fi
      else
        IFS= read -r -d '' text <"$tmp/$src.txt" || true
      fi
    fi
    bytes[$src]=$(byte_length "$text")
    total=$((total + bytes[$src]))
    extra=()
    if [[ $src == docker ]]; then
      local names_json=() name
      for name in "${containers[@]}"; do names_json+=("$(bpcs_json_str "$name")"); done
      extra=(containers "$(bpcs_arr "${names_json[@]}")")
    fi
    json_sources+=("$src" "$(bpcs_obj \
      available "$(bpcs_bool "${available[$src]}")" \
      bytes "${bytes[$src]}" \
      truncated "$(bpcs_bool "${truncated[$src]}")" \
      detail "$(bpcs_json_str "${detail[$src]}")" \
      "${extra[@]}" \
      text "$(bpcs_json_str "$text")")")
  done
  data=$(bpcs_obj \
    since "$(bpcs_json_str "$since")" \
    max_bytes "$1" \
    lines "$lines" \
    sources "$(bpcs_obj "${json_sources[@]}")" \
    total_bytes "$total")
}

# Escaping can grow the text (every " or \ doubles): if the data object would not fit, shrink the budget in
# proportion and rebuild.
budget=$max_bytes
data=''
for _ in 1 2 3 4 5 6; do
  build_data "$budget"
  data_bytes=$(byte_length "$data")
  if ((data_bytes <= max_data_bytes || budget <= 1024)); then break; fi
  budget=$((budget * (max_data_bytes - 8192) / data_bytes))
  if ((budget < 1024)); then budget=1024; fi
  bpcs_log WARN "escaped logs exceed the output limit ($data_bytes bytes); retrying with max_bytes $budget"
done

got=() missing=() cut=()
for src in "${sources[@]}"; do
  if ((available[$src])); then
    label="$src ${bytes[$src]} B"
    if [[ $src == docker ]]; then label="docker ${#containers[@]} container(s) ${bytes[$src]} B"; fi
    got+=("$label")
    if ((truncated[$src])); then cut+=("$src"); fi
  else
    missing+=("$src")
  fi
done

if ((${#got[@]} == 0)); then
  bpcs_finish warn "no log source available (journal, dmesg, docker, nomad)" false "$data"
fi
# join ITEM...: the items separated by ", ".
join() {
  local out=$1
  shift
  while (($#)); do
    out+=", $1"
    shift
  done
  printf '%s' "$out"
}
summary="logs since $since: $(join "${got[@]}")"
if ((${#cut[@]})); then summary+="; truncated to fit max_bytes: $(join "${cut[@]}")"; fi
if ((${#missing[@]})); then summary+="; unavailable: $(join "${missing[@]}")"; fi
bpcs_finish ok "$summary" false "$data"
