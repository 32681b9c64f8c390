# RUNE's SSM wrapper (src/transport/ssm_wrap.sh), run by bash in the private dir the SSM command made ($1).
# SSM returns only the first 24,000 characters of stdout and 8,000 of stderr, so the runner's output goes to
# files and comes back as one frame: a header with the byte counts, stdout gzip'd and base64'd (raw without
# gzip), an end line; then the tail of stderr. Only numbers and fixed text are filled in here.
d=$1
trap 'rm -rf -- "$d"' EXIT
mkfifo "$d/errp" || exit 125
head -c @ERR_KEEP@ <"$d/errp" >"$d/err" &
ep=$!
@COMMAND@ <"$d/runner.in" 2>"$d/errp" | head -c @OUT_KEEP@ >"$d/out"
rc=${PIPESTATUS[0]}
wait "$ep"
n=$(wc -c <"$d/out")
en=$(wc -c <"$d/err")
if command -v gzip >/dev/null 2>&1 && command -v base64 >/dev/null 2>&1; then enc=gzip-base64; else enc=raw; fi
printf 'rune-ssm-frame 1 @NONCE@ %s %s %s\n' "$n" "$en" "$enc"
if [ "$enc" = gzip-base64 ]; then gzip -c <"$d/out" | base64; else cat <"$d/out"; printf '\n'; fi
printf 'rune-ssm-end @NONCE@\n'
tail -c @ERR_TAIL@ <"$d/err" >&2
exit "$rc"
