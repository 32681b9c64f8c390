# RUNE's SSM wrapper (src/transport/ssm_wrap.sh), run by bash in the private dir the SSM command made ($1).
# SSM returns only the first 24,000 characters of stdout and 8,000 of stderr, so the runner's output goes to
# files and comes back as one frame: a header with the byte counts, stdout gzip'd and base64'd (raw without
# gzip), an end line; then the tail of stderr. Only numbers and fixed text are filled in here.
d=$1
trap 'rm -rf -- "$d"' EXIT
mkfifo "$d/outp" "$d/errp" || exit 125
# dd writes each chunk as it reads it (head buffers, and a reader stopped below would lose its last chunk).
dd bs=65536 iflag=count_bytes count=@OUT_KEEP@ status=none <"$d/outp" >"$d/out" &
op=$!
dd bs=65536 iflag=count_bytes count=@ERR_KEEP@ status=none <"$d/errp" >"$d/err" &
ep=$!
# The runner leads a session of its own, as over SSH (sshd makes one per channel): after a timeout its sweep finds
# what left the plugin's process group. (The agent's kill of this script's group then misses the runner: RUNE's
# cleanup command kills it by its pid file, and its own timeout bounds it.)
if command -v setsid >/dev/null 2>&1; then
  setsid -w @COMMAND@ <"$d/runner.in" >"$d/outp" 2>"$d/errp"
else
  @COMMAND@ <"$d/runner.in" >"$d/outp" 2>"$d/errp"
fi
rc=$?
# The runner has exited. Something it left behind may still hold its output open: the readers get @DRAIN_STEPS@
# hundredths of a second to see the end, then they are stopped and the frame says so (over SSH: the exit grace).
lingered=0 i=0
while { kill -0 "$op" || kill -0 "$ep"; } 2>/dev/null; do
  if [ "$i" -ge @DRAIN_STEPS@ ]; then lingered=1; kill "$op" "$ep" 2>/dev/null; break; fi
  sleep 0.01
  i=$((i + 1))
done
wait "$op" "$ep" 2>/dev/null
n=$(wc -c <"$d/out")
en=$(wc -c <"$d/err")
if command -v gzip >/dev/null 2>&1 && command -v base64 >/dev/null 2>&1; then enc=gzip-base64; else enc=raw; fi
printf 'rune-ssm-frame 1 @NONCE@ %s %s %s %s\n' "$n" "$en" "$enc" "$lingered"
if [ "$enc" = gzip-base64 ]; then gzip -c <"$d/out" | base64; else cat <"$d/out"; printf '\n'; fi
printf 'rune-ssm-end @NONCE@\n'
tail -c @ERR_TAIL@ <"$d/err" >&2
exit "$rc"
