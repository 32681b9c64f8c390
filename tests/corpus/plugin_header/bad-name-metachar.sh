#!/usr/bin/env bash
# ---
# bpcs: "0.1"
# name: "$(id)"
# version: 1.0.0
# description: d
# class: diagnostic
# timeout: 10
# ---
echo
