#!/usr/bin/env bash
# ---
# bpcs: "0.1"
# name: disk-usage
# version: 1.0.0
# description: Reports how full the filesystem holding a path is, and warns at a threshold.
# tags: [disk, diagnostic]
# class: diagnostic
# needs_root: false
# timeout: 30
# requires: [df]
# args:
#   path:
#     type: string
#     required: false
#     default: /
#     pattern: "^/[A-Za-z0-9._/-]{0,255}$"
#     description: Any path on the filesystem to check (its mount point, or a directory on it)
#   warn_percent:
#     type: integer
#     required: false
#     default: 90
#     pattern: "^([0-9]|[1-9][0-9]|100)$"
#     description: Status warn when the filesystem is at least this full (0-100)
# ---
# disk-usage.sh — one `df -P -k` of the filesystem holding `path`: its size, use and mount point in `data`;
# status warn when it is at least `warn_percent` full. Reads only, so a dry run does the same check.
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib/bpcs.sh
. "$RUNE_LIB/bpcs.sh"

path=$(bpcs_arg path /)
warn_percent=$(bpcs_arg warn_percent 90)
path_json=''
bpcs_json_str -v path_json "$path"

# df -P prints a header line, then one line per filesystem, never wrapped; `--` ends the options.
if ! out=$(df -P -k -- "$path" 2>&1); then
  bpcs_log ERROR "df -P -k -- $path: $out"
  bpcs_finish error "cannot read the filesystem of $path: ${out##*$'\n'}" false "$(bpcs_obj path "$path_json")"
fi
line=${out##*$'\n'}
read -r filesystem size used available capacity mount <<<"$line"
percent=${capacity%\%}
if [[ ! $percent =~ ^[0-9]+$ || ! $size =~ ^[0-9]+$ || ! $used =~ ^[0-9]+$ || ! $available =~ ^[0-9]+$ ]]; then
  bpcs_finish error "unexpected df output for $path: $line" false "$(bpcs_obj path "$path_json")"
fi

status=ok
if ((percent >= warn_percent)); then status=warn; fi
fs_json='' mount_json='' data=''
bpcs_json_str -v fs_json "$filesystem"
bpcs_json_str -v mount_json "$mount"
bpcs_obj -v data path "$path_json" mount "$mount_json" filesystem "$fs_json" size_kib "$size" used_kib "$used" \
  available_kib "$available" used_percent "$percent" warn_percent "$warn_percent"
bpcs_finish "$status" "$mount is $percent% full (warn at $warn_percent%)" false "$data"
