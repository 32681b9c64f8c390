# bpcs.sh — the BPCS v0.1 helper library: builds the single JSON result object a plugin prints for RUNE.
# shellcheck shell=bash
#
# A plugin sources it with   . "$RUNE_LIB/bpcs.sh"   (RUNE copies plugins/lib/*.sh next to the plugin).
# Pure bash >= 4.4: no external commands, no subshells. Safe under `set -euo pipefail`; it never changes the
# caller's shell options (set/shopt), traps, or file descriptors. The value helpers print to stdout WITHOUT a
# trailing newline, so `x=$(bpcs_json_str "$v")` is exact; with `-v VAR` first they assign VAR instead, like
# `printf -v`, which forks nothing: `bpcs_json_str -v x "$v"` costs microseconds, `x=$(...)` a process.
# Names starting with `_bpcs` are private (and not accepted as VAR).
#
#   bpcs_log LEVEL MSG...           stderr line "LEVEL: MSG..."
#   bpcs_json_str [-v VAR] STR      STR as a JSON string literal: \ and " escaped, \n \t \r as such, the other
#                                   control chars 0x01-0x1f as \u00XX; every other byte (>= 0x20, incl. UTF-8
#                                   and DEL) passes through unchanged
#   bpcs_obj [-v VAR] KEY JSON [KEY JSON]...
#                                   {"KEY":JSON,...}; KEYs are escaped, JSON values inserted raw (empty -> error)
#   bpcs_arr [-v VAR] [JSON]...     [JSON,...]; no arguments -> []
#   bpcs_bool [-v VAR] 0|1|true|false
#                                   true|false
#   bpcs_arg NAME [DEFAULT]         value of RUNE_ARG_NAME, or DEFAULT (default "") when that is unset.
#                                   NOTE: $(...) strips trailing newlines; when bytes matter read
#                                   "${RUNE_ARG_name-}" directly.
#   bpcs_dry_run                    status 0 iff RUNE_DRY_RUN=1
#   bpcs_finish STATUS SUMMARY CHANGED DATA_JSON
#                                   prints {"bpcs":"0.1","status":…,"summary":…,"data":…,"changed":…} and
#                                   exits 0 (ok|warn|skipped) or 1 (error); empty DATA_JSON means {}.
#                                   SUMMARY is made one line (control chars -> space) and cut to 1024 bytes
#                                   on a UTF-8 boundary. A bad STATUS or CHANGED, or a DATA_JSON that is not
#                                   an object, is reported as status error ("plugin bug: …") rather than as
#                                   broken JSON. Call it from the main shell, not inside $(...), or only the
#                                   subshell exits.
#
# Misuse (bad arguments) logs "ERROR: …" to stderr and returns 2 without printing anything.

# Loaded already from this very path (a RUNE session shell loads it once, before forking each run): done.
if [[ ${_bpcs_loaded-} == "${BASH_SOURCE[0]}" ]]; then return 0; fi
_bpcs_loaded=${BASH_SOURCE[0]}

# Escaping tables, as literals (sourcing is on every run's path): _bpcs_ctl_chars[i] is the byte i (1..31),
# _bpcs_ctl_escapes[i] its JSON form, _bpcs_ctl_class all 31 bytes for one quick "any control char?" test.
_bpcs_ctl_chars=([1]=$'\x01' [2]=$'\x02' [3]=$'\x03' [4]=$'\x04' [5]=$'\x05' [6]=$'\x06' [7]=$'\x07' [8]=$'\x08'
  [9]=$'\x09' [10]=$'\x0a' [11]=$'\x0b' [12]=$'\x0c' [13]=$'\x0d' [14]=$'\x0e' [15]=$'\x0f' [16]=$'\x10' [17]=$'\x11'
  [18]=$'\x12' [19]=$'\x13' [20]=$'\x14' [21]=$'\x15' [22]=$'\x16' [23]=$'\x17' [24]=$'\x18' [25]=$'\x19' [26]=$'\x1a'
  [27]=$'\x1b' [28]=$'\x1c' [29]=$'\x1d' [30]=$'\x1e' [31]=$'\x1f')
_bpcs_ctl_escapes=([1]='\u0001' [2]='\u0002' [3]='\u0003' [4]='\u0004' [5]='\u0005' [6]='\u0006' [7]='\u0007'
  [8]='\u0008' [9]='\t' [10]='\n' [11]='\u000b' [12]='\u000c' [13]='\r' [14]='\u000e' [15]='\u000f' [16]='\u0010'
  [17]='\u0011' [18]='\u0012' [19]='\u0013' [20]='\u0014' [21]='\u0015' [22]='\u0016' [23]='\u0017' [24]='\u0018'
  [25]='\u0019' [26]='\u001a' [27]='\u001b' [28]='\u001c' [29]='\u001d' [30]='\u001e' [31]='\u001f')
_bpcs_ctl_class=$'\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f'

# _bpcs_escape STR: sets _bpcs_escaped to STR's JSON string body (no surrounding quotes).
# Works bytewise (LC_ALL=C, restored on return): only ASCII bytes are replaced, and no ASCII byte ever occurs
# inside a UTF-8 multibyte sequence, so UTF-8 and even invalid bytes pass through untouched. That also makes
# any cut point safe, which matters because ${s//x/y} gets quadratic in the number of matches on long strings
# (786 KiB of quotes: 7.7 s whole, 0.5 s in 32 KiB pieces): long input is escaped piece by piece.
# Patterns and replacements are quoted, so bash 5.2's patsub_replacement (`&`) and globbing never apply.
_bpcs_escaped=''
_bpcs_escape() {
  local LC_ALL=C
  local s=${1-} out='' off
  if ((${#s} <= 32768)); then
    _bpcs_escape_piece "$s"
    return 0
  fi
  for ((off = 0; off < ${#s}; off += 32768)); do
    _bpcs_escape_piece "${s:off:32768}"
    out+=$_bpcs_escaped
  done
  _bpcs_escaped=$out
}

# _bpcs_escape_piece STR: _bpcs_escape for one piece; runs under its caller's LC_ALL=C.
_bpcs_escape_piece() {
  local s=$1 bs=\\ dq='"' i
  if [[ $s == *"$bs"* ]]; then s=${s//"$bs"/"$bs$bs"}; fi
  if [[ $s == *"$dq"* ]]; then s=${s//"$dq"/"$bs$dq"}; fi
  if [[ $s == *["$_bpcs_ctl_class"]* ]]; then
    for ((i = 1; i < 32; i++)); do
      if [[ $s == *"${_bpcs_ctl_chars[i]}"* ]]; then
        s=${s//"${_bpcs_ctl_chars[i]}"/"${_bpcs_ctl_escapes[i]}"}
      fi
    done
  fi
  _bpcs_escaped=$s
}

bpcs_log() {
  local IFS=' ' level=${1-INFO}
  if (($#)); then shift; fi
  printf '%s: %s\n' "$level" "$*" >&2
}

# _bpcs_var FUNC VAR: checks a -v target: a plain variable name, not one of ours (a local would shadow it).
_bpcs_var() {
  # Globs, not =~: bash compiles a regex on every use, and this runs for every -v call.
  if [[ -z $2 || ${#2} -gt 64 || $2 == [!A-Za-z_]* || $2 == *[!A-Za-z0-9_]* || $2 == _bpcs* ]]; then
    bpcs_log ERROR "$1: invalid variable name for -v: '$2'"
    return 2
  fi
}

# _bpcs_put VAR VALUE: assigns VALUE to VAR, or prints it when VAR is empty.
_bpcs_put() {
  if [[ -n $1 ]]; then printf -v "$1" '%s' "$2"; else printf '%s' "$2"; fi
}

bpcs_json_str() {
  local _bpcs_to=''
  if [[ ${1-} == -v ]]; then
    _bpcs_var bpcs_json_str "${2-}" || return 2
    _bpcs_to=$2
    shift 2
  fi
  _bpcs_escape "${1-}"
  _bpcs_put "$_bpcs_to" "\"$_bpcs_escaped\""
}

bpcs_obj() {
  local _bpcs_to='' _bpcs_out='' _bpcs_sep=''
  if [[ ${1-} == -v ]]; then
    _bpcs_var bpcs_obj "${2-}" || return 2
    _bpcs_to=$2
    shift 2
  fi
  if (($# % 2)); then
    bpcs_log ERROR "bpcs_obj: expected KEY JSON pairs, got $# arguments"
    return 2
  fi
  while (($#)); do
    if [[ -z $2 ]]; then
      bpcs_log ERROR "bpcs_obj: empty JSON value for key '$1'"
      return 2
    fi
    _bpcs_escape "$1"
    _bpcs_out+="$_bpcs_sep\"$_bpcs_escaped\":$2"
    _bpcs_sep=,
    shift 2
  done
  _bpcs_put "$_bpcs_to" "{$_bpcs_out}"
}

bpcs_arr() {
  local _bpcs_to='' _bpcs_item
  if [[ ${1-} == -v ]]; then
    _bpcs_var bpcs_arr "${2-}" || return 2
    _bpcs_to=$2
    shift 2
  fi
  for _bpcs_item in "$@"; do
    if [[ -z $_bpcs_item ]]; then
      bpcs_log ERROR "bpcs_arr: empty JSON element"
      return 2
    fi
  done
  local IFS=,
  _bpcs_put "$_bpcs_to" "[$*]"
}

bpcs_bool() {
  local _bpcs_to=''
  if [[ ${1-} == -v ]]; then
    _bpcs_var bpcs_bool "${2-}" || return 2
    _bpcs_to=$2
    shift 2
  fi
  case ${1-} in
    1 | true) _bpcs_put "$_bpcs_to" true ;;
    0 | false) _bpcs_put "$_bpcs_to" false ;;
    *)
      bpcs_log ERROR "bpcs_bool: expected 0|1|true|false, got '${1-}'"
      return 2
      ;;
  esac
}

bpcs_arg() {
  local LC_ALL=C
  local name=${1-}
  # The name becomes part of an indirect expansion: only plain arg names (BPCS: ^[a-z][a-z0-9_]{0,62}$),
  # never anything with [ ] that bash would evaluate as an array subscript.
  if [[ -z $name || ${#name} -gt 63 || $name != [a-z]* || $name == *[!a-z0-9_]* ]]; then
    bpcs_log ERROR "bpcs_arg: invalid arg name '$name'"
    return 2
  fi
  local var="RUNE_ARG_$name"
  if [[ -n ${!var+set} ]]; then
    printf '%s' "${!var}"
  else
    printf '%s' "${2-}"
  fi
}

bpcs_dry_run() {
  [[ ${RUNE_DRY_RUN-0} == 1 ]]
}

# _bpcs_summary STR: sets _bpcs_escaped to STR as one line of at most 1024 bytes, cut on a UTF-8 boundary,
# JSON-escaped.
_bpcs_summary() {
  local LC_ALL=C
  local s=${1-} b k n need
  if [[ $s == *["$_bpcs_ctl_class"]* ]]; then s=${s//["$_bpcs_ctl_class"]/ }; fi
  if ((${#s} > 1024)); then
    s=${s:0:1024}
    n=${#s}
    # Drop a trailing multibyte sequence the cut left incomplete (look back at most 4 bytes for its lead).
    for ((k = 1; k <= 4; k++)); do
      b=${s:n-k:1}
      case $b in
        [$'\x80'-$'\xbf']) continue ;;
        [$'\xc0'-$'\xdf']) need=2 ;;
        [$'\xe0'-$'\xef']) need=3 ;;
        [$'\xf0'-$'\xf7']) need=4 ;;
        *) need=1 ;;
      esac
      if ((k < need)); then s=${s:0:n-k}; fi
      break
    done
  fi
  _bpcs_escape "$s"
}

bpcs_finish() {
  local status=${1-} summary=${2-} changed=${3-} data=${4-} code bug=''
  case $status in
    ok | warn | skipped) code=0 ;;
    error) code=1 ;;
    *) bug+="invalid status '$status'; " status=error code=1 ;;
  esac
  case $changed in
    1 | true) changed=true ;;
    0 | false) changed=false ;;
    *)
      # Unknown: something may have changed, so do not claim otherwise.
      bug+="invalid changed '$changed'; " changed=true
      ;;
  esac
  if [[ -z $data ]]; then data='{}'; fi
  local trimmed=$data
  trimmed=${trimmed#"${trimmed%%[![:space:]]*}"}
  trimmed=${trimmed%"${trimmed##*[![:space:]]}"}
  if [[ $trimmed != '{'*'}' ]]; then
    bug+="data is not a JSON object; "
    data='{}'
  fi
  if [[ -n $bug ]]; then
    bpcs_log ERROR "bpcs_finish: plugin bug: ${bug%; }"
    summary="plugin bug: ${bug%; } (summary was: $summary)"
    status=error code=1
  fi
  _bpcs_summary "$summary"
  printf '{"bpcs":"0.1","status":"%s","summary":"%s","data":%s,"changed":%s}\n' \
    "$status" "$_bpcs_escaped" "$data" "$changed"
  exit "$code"
}
