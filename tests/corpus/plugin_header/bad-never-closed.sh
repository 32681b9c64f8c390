#!/bin/bash
# ---
# bpcs: "0.1"
