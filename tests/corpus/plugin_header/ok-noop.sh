#!/usr/bin/env bash
# ---
# bpcs: "0.1"
# name: noop
# version: 1.0.0
# description: Does nothing and echoes an optional message back, byte for byte.
# tags: [test, diagnostic]
# class: diagnostic
# needs_root: false
# timeout: 30
# requires: []
# args:
#   message:
#     type: string
#     required: false
#     default: ""
#     pattern: "^[^\\x00]{0,4096}$"
#     description: Text returned in data.message (any bytes but NUL, newlines included, at most 4096 chars)
# ---
# noop.sh — changes nothing; proves the RUNE -> host -> plugin -> RUNE path, and that values survive it intact.
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib/bpcs.sh
. "$RUNE_LIB/bpcs.sh"

# Read straight from the environment: `$(bpcs_arg message)` would strip trailing newlines.
message=${RUNE_ARG_message-}
host=${RUNE_HOST-}
dry_run=0
if bpcs_dry_run; then dry_run=1; fi

# -v assigns instead of printing: no $(...) subshell per value.
message_json='' host_json='' dry_run_json='' data=''
bpcs_json_str -v message_json "$message"
bpcs_json_str -v host_json "$host"
bpcs_bool -v dry_run_json "$dry_run"
bpcs_obj -v data message "$message_json" host "$host_json" dry_run "$dry_run_json"

bpcs_finish ok "noop on ${host:-unknown host}: nothing to do" false "$data"
