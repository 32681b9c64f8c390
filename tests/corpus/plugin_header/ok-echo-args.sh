#!/usr/bin/env bash
# ---
# bpcs: "0.1"
# name: echo-args
# version: 0.1.0
# description: Test fixture — returns every argument it received through the helpers
# tags: [test]
# class: diagnostic
# timeout: 30
# requires: []
# args:
#   text:
#     type: string
#     required: true
#   count:
#     type: integer
#     default: 1
#   flag:
#     type: boolean
#     default: false
# ---
# Regression: placeholders of the runner template in a plugin body stay text: @ENV_VARS@ @RUN_ID@ @PUT_FILES@
# shellcheck disable=SC2154 # RUNE_ARG_* come from the RUNE runner
# shellcheck source=SCRIPTDIR/../../../plugins/lib/bpcs.sh
. "$RUNE_LIB/bpcs.sh"
bpcs_finish ok "echoed" false "$(bpcs_obj text "$(bpcs_json_str "$RUNE_ARG_text")" count "$RUNE_ARG_count" flag "$(bpcs_bool "$RUNE_ARG_flag")" stdin_bytes "$(wc -c <"$RUNE_INPUT")" cwd "$(bpcs_json_str "$PWD")")"
