#!/usr/bin/env bash
# One-shot `keys` service of the compose stack: makes the SSH keys the first time and publishes what each side
# needs; on later starts it keeps the keys and only rewrites what is derived from them.
#   /keys/target (volume target-ssh, read-only in `target`): the target's host key, authorized_keys
#   /keys/rune   (volume rune-ssh, read-only in `rune`):     RUNE's login key, known_hosts
# known_hosts is written from the host key file itself, never from a scan over the network: RUNE checks the
# target's key strictly against a key it can trust.
set -euo pipefail

target_dir=/keys/target
rune_dir=/keys/rune
host_name=${TARGET_HOST_NAME:-target}
rune_uid=${RUNE_UID:-10001}
rune_gid=${RUNE_GID:-10001}

umask 022
mkdir -p "$target_dir" "$rune_dir"
chown root:root "$target_dir" "$rune_dir"
chmod 0755 "$target_dir" "$rune_dir"

if [ ! -s "$target_dir/ssh_host_ed25519_key" ]; then
  rm -f "$target_dir/ssh_host_ed25519_key" "$target_dir/ssh_host_ed25519_key.pub"
  ssh-keygen -q -t ed25519 -N '' -C "$host_name" -f "$target_dir/ssh_host_ed25519_key"
  echo "keys: generated the host key of $host_name"
fi
if [ ! -s "$rune_dir/id_ed25519" ]; then
  rm -f "$rune_dir/id_ed25519" "$rune_dir/id_ed25519.pub"
  ssh-keygen -q -t ed25519 -N '' -C rune@compose -f "$rune_dir/id_ed25519"
  echo "keys: generated RUNE's login key"
fi

# Only RUNE's key may log in to the target.
install -o root -g root -m 0644 "$rune_dir/id_ed25519.pub" "$target_dir/authorized_keys.new"
mv -f "$target_dir/authorized_keys.new" "$target_dir/authorized_keys"

# known_hosts: `<name> <type> <key>` of the host key just made or kept.
read -r key_type key_data _ < "$target_dir/ssh_host_ed25519_key.pub"
printf '%s %s %s\n' "$host_name" "$key_type" "$key_data" > "$rune_dir/known_hosts.new"
chmod 0644 "$rune_dir/known_hosts.new"
mv -f "$rune_dir/known_hosts.new" "$rune_dir/known_hosts"

# The private keys: the host key for sshd (root), the login key for the uid the rune container runs as.
chown root:root "$target_dir/ssh_host_ed25519_key"
chmod 0600 "$target_dir/ssh_host_ed25519_key"
chown "$rune_uid:$rune_gid" "$rune_dir/id_ed25519"
chmod 0600 "$rune_dir/id_ed25519"

echo "keys: $host_name host key $(ssh-keygen -l -f "$target_dir/ssh_host_ed25519_key.pub" | cut -d' ' -f2)"
echo "keys: RUNE login key $(ssh-keygen -l -f "$rune_dir/id_ed25519.pub" | cut -d' ' -f2), for uid $rune_uid"
