#!/usr/bin/env bash
# Make a verified bake server fit to be snapshotted: every runner booted from the snapshot must
# be a new cloud-init instance (it then applies its own build's keys) with a new machine id
# and new SSH host keys, and nothing of the bake may stay behind. Run last, by
# `buildkit-launcher golden-image build`, just before the server is powered off.
#
# BKL_ROOT set (a sandbox runner): nothing of the host is touched; only the bake files go.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ -n "${BKL_ROOT:-}" ]; then
    echo "clean: BKL_ROOT is set (sandbox): cloud-init clean and host key removal skipped"
else
    systemctl stop buildkit.service || true
    # BuildKit's state from the verification (buildctl debug workers) is not for the runners.
    rm -rf /var/lib/buildkit
    cloud-init clean --logs --machine-id --seed
    rm -f /etc/ssh/ssh_host_*
    # The bake's own login key: each runner gets its build's key from its user data.
    rm -f /root/.ssh/authorized_keys
    apt-get clean
    rm -f /root/.bash_history
    echo "clean: cloud-init state, machine id, SSH host and login keys, apt caches removed"
fi
rm -rf "$here"
sync
echo "clean: done"
