# bpcs.sh — the BPCS v0.1 helper library: builds the single JSON result object a plugin prints for RUNE.
# shellcheck shell=bash
#
# A plugin sources it with   . "$RUNE_LIB/bpcs.sh"   (RUNE copies plugins/lib/*.sh next to the plugin).
# Pure bash >= 4.4: no external commands, no subshells. Safe under `set -euo pipefail`; it never changes the
# caller's shell options (set/shopt), traps, or file descriptors. The value helpers print to stdout WITHOUT a
# trailing newline, so `x=$(bpcs_json_str "$v")` is exact. Names starting with `_bpcs` are private.
#
#   bpcs_log LEVEL MSG...           stderr line "LEVEL: MSG..."
#   bpcs_json_str STR               STR as a JSON string literal: \ and " escaped, \n \t \r as such, the other
#                                   control chars 0x01-0x1f as \u00XX; every other byte (>= 0x20, incl. UTF-8
#                                   and DEL) passes through unchanged
#   bpcs_obj KEY JSON [KEY JSON]... {"KEY":JSON,...}; KEYs are escaped, JSON values inserted raw (empty -> error)
#   bpcs_arr [JSON]...              [JSON,...]; no arguments -> []
#   bpcs_bool 0|1|true|false        true|false
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

# Escaping tables, built once: _bpcs_ctl_chars[i] is the byte i (1..31), _bpcs_ctl_escapes[i] its JSON form.
_bpcs_ctl_chars=()
_bpcs_ctl_escapes=()
_bpcs_ctl_class=''   # all 31 control bytes, for one quick "any control char at all?" test
_bpcs_init() {
  local i hex ch
  for ((i = 1; i < 32; i++)); do
    printf -v hex '%02x' "$i"
    printf -v ch '%b' "\\x$hex"
    _bpcs_ctl_chars[i]=$ch
    _bpcs_ctl_escapes[i]="\\u00$hex"
    _bpcs_ctl_class+=$ch
  done
  _bpcs_ctl_escapes[9]='\t'
  _bpcs_ctl_escapes[10]='\n'
  _bpcs_ctl_escapes[13]='\r'
}
_bpcs_init
unset -f _bpcs_init

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

bpcs_json_str() {
  _bpcs_escape "${1-}"
  printf '"%s"' "$_bpcs_escaped"
}

bpcs_obj() {
  if (($# % 2)); then
    bpcs_log ERROR "bpcs_obj: expected KEY JSON pairs, got $# arguments"
    return 2
  fi
  local out='' sep=''
  while (($#)); do
    if [[ -z $2 ]]; then
      bpcs_log ERROR "bpcs_obj: empty JSON value for key '$1'"
      return 2
    fi
    _bpcs_escape "$1"
    out+="$sep\"$_bpcs_escaped\":$2"
    sep=,
    shift 2
  done
  printf '{%s}' "$out"
}

bpcs_arr() {
  local item
  for item in "$@"; do
    if [[ -z $item ]]; then
      bpcs_log ERROR "bpcs_arr: empty JSON element"
      return 2
    fi
  done
  local IFS=,
  printf '[%s]' "$*"
}

bpcs_bool() {
  case ${1-} in
    1 | true) printf true ;;
    0 | false) printf false ;;
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
