#!/usr/bin/env bash
# ---
# bpcs: "0.1"
# name: broken-header
# version: not-a-version
# description: Test fixture — a malformed header; the registry reports it and loads the rest
# class: diagnostic
# ---
echo '{}'
