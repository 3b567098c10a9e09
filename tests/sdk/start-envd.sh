#!/usr/bin/env bash
# Starts envd for the SDK tests, as the sandbox would see it, without changing the host:
# a private mount namespace whose /etc/passwd and /etc/group add the user `user` (uid 4242,
# home STATE/home/user), and a 256 KiB tmpfs at STATE/small for the disk-full case.
# Usage: start-envd.sh STATE ENVD [envd flags...]   (needs root; execs envd, so its pid is ours)
set -euo pipefail
state=$1
envd=$2
shift 2
mkdir -p "$state/home/user" "$state/small"
chmod 755 "$state" "$state/home"
grep -v '^user:' /etc/passwd > "$state/passwd"
grep -v '^user:' /etc/group > "$state/group"
echo "user:x:4242:4242:Kiln test user:$state/home/user:/bin/bash" >> "$state/passwd"
echo "user:x:4242:" >> "$state/group"
chown 4242:4242 "$state/home/user"
exec unshare --mount --propagation private -- sh -c '
  state=$1; shift
  mount --bind "$state/passwd" /etc/passwd
  mount --bind "$state/group" /etc/group
  mount -t tmpfs -o size=256k tmpfs "$state/small"
  chmod 1777 "$state/small"
  exec "$@"' start-envd "$state" "$envd" "$@"
