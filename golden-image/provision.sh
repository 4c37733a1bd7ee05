#!/usr/bin/env bash
# Provision a golden-image bake server: BuildKit (pinned version, verified checksum), its
# config and systemd unit, rsync, and bkl-runner-stats. Run as root on the bake server by
# `buildkit-launcher golden-image build`, from a directory holding this script's siblings
# (buildkit.pin, buildkitd.toml, buildkit.service, bkl-runner-stats; buildkitd.toml and the
# CA files in registry-ca/ are rendered by the launcher from the operator's launcher config).
# Idempotent: running it again leaves the same result.
#
#   provision.sh [PIN]        PIN: the pin file (default: $BKL_PIN, else ./buildkit.pin)
#
# Environment:
#   BKL_ROOT         install prefix (default: none, i.e. /). Sandbox runners set it: then
#                    nothing is installed with apt and systemd is left alone, so provisioning
#                    in a sandbox never touches the host's /etc, /usr or services.
#   BKL_ARCH         amd64|arm64 (default: this machine's architecture)
#   BUILDKIT_MIRROR  a base URL holding the release tarballs under their release names,
#                    used instead of the pin's BUILDKIT_URL (for a bake without GitHub access)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pin=${1:-${BKL_PIN:-$here/buildkit.pin}}
ROOT="${BKL_ROOT:-}"

say() { printf 'provision: %s\n' "$*"; }
die() { printf 'provision: FAILED: %s\n' "$*" >&2; exit 1; }

# KEY=VALUE from the pin file, surrounding quotes removed; never sourced (nothing in it runs).
pin_get() {
    local line value
    line=$(grep -E "^[[:space:]]*$1=" "$pin" | tail -n 1) || die "$pin: $1 is not set"
    value=${line#*=}
    value=${value%%[[:space:]]#*}
    value=${value%"${value##*[![:space:]]}"}
    value=${value#\'}; value=${value%\'}
    value=${value#\"}; value=${value%\"}
    [ -n "$value" ] || die "$pin: $1 is empty"
    printf '%s' "$value"
}

[ -r "$pin" ] || die "pin file $pin is not readable"
VERSION=$(pin_get BUILDKIT_VERSION)
case "${BKL_ARCH:-}" in
    amd64 | arm64) ARCH=$BKL_ARCH ;;
    "")
        case "$(uname -m)" in
            x86_64) ARCH=amd64 ;;
            aarch64 | arm64) ARCH=arm64 ;;
            *) die "unsupported machine architecture $(uname -m)" ;;
        esac
        ;;
    *) die "BKL_ARCH=$BKL_ARCH: must be amd64 or arm64" ;;
esac
if [ "$ARCH" = amd64 ]; then SHA256=$(pin_get BUILDKIT_SHA256_AMD64); else SHA256=$(pin_get BUILDKIT_SHA256_ARM64); fi
[[ $SHA256 =~ ^[0-9a-f]{64}$ ]] || die "$pin: the $ARCH checksum is not 64 lowercase hex digits"
tarball="buildkit-${VERSION}.linux-${ARCH}.tar.gz"
if [ -n "${BUILDKIT_MIRROR:-}" ]; then
    url="${BUILDKIT_MIRROR%/}/$tarball"
else
    url=$(pin_get BUILDKIT_URL)
    # The pin's placeholders, literally (shellcheck: no expansion wanted here).
    # shellcheck disable=SC2016
    url=${url//'${BUILDKIT_VERSION}'/$VERSION}
    # shellcheck disable=SC2016
    url=${url//'${ARCH}'/$ARCH}
fi
say "BuildKit $VERSION for $ARCH; install prefix '${ROOT:-/}'"

# 1. Packages (a real server only; sandbox runners have rsync, curl and tar).
if [ -z "$ROOT" ]; then
    if command -v cloud-init >/dev/null 2>&1; then
        say "waiting for cloud-init to finish (it installs packages too)"
        cloud-init status --wait >/dev/null || say "cloud-init reported a problem; continuing"
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends rsync curl ca-certificates tar
fi
for tool in curl sha256sum tar rsync; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done

# 2. BuildKit: download, verify, extract (skipped when the pinned version is already there).
bin="$ROOT/usr/local/bin"
installed() {
    "$bin/$1" --version 2>/dev/null | grep -qF " $VERSION "
}
if installed buildctl && installed buildkitd; then
    say "buildctl and buildkitd $VERSION are already installed"
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    say "downloading $url"
    curl -fsSL --retry 3 --connect-timeout 20 -o "$work/$tarball" "$url" || die "cannot download $url"
    actual=$(sha256sum "$work/$tarball" | cut -d' ' -f1)
    if [ "$actual" != "$SHA256" ]; then
        die "checksum mismatch for $tarball: expected $SHA256 (from $pin), got $actual; refusing to install it"
    fi
    say "checksum verified: sha256 $actual"
    mkdir -p "$work/x"
    tar -xzf "$work/$tarball" -C "$work/x"
    for b in buildctl buildkitd; do
        [ -f "$work/x/bin/$b" ] || die "$tarball holds no bin/$b"
    done
    mkdir -p "$bin"
    # Everything the release ships in bin/ (buildkit-runc, the OCI worker's runtime, too).
    for f in "$work"/x/bin/*; do
        install -m 0755 "$f" "$bin/$(basename "$f")"
    done
    say "installed $(cd "$work/x/bin" && echo *) in $bin"
fi

# 3. Configuration, units and the stats command.
units="$ROOT/etc/systemd/system"
install -D -m 0644 "$here/buildkitd.toml" "$ROOT/etc/buildkit/buildkitd.toml"
# CA certificates the config names for registries (buildkitd.registries.*.ca_file), exactly
# those: a CA left from an earlier provisioning would stay trusted.
rm -rf "$ROOT/etc/buildkit/registry-ca"
if [ -d "$here/registry-ca" ]; then
    for f in "$here"/registry-ca/*.pem; do
        [ -e "$f" ] || continue
        install -D -m 0644 "$f" "$ROOT/etc/buildkit/registry-ca/$(basename "$f")"
        say "installed the registry CA $ROOT/etc/buildkit/registry-ca/$(basename "$f")"
    done
fi
install -D -m 0644 "$here/buildkit.service" "$units/buildkit.service"
install -D -m 0644 "$here/bkl-runner-stats.service" "$units/bkl-runner-stats.service"
install -D -m 0644 "$here/ssh-oom.conf" "$units/ssh.service.d/buildkit-launcher-oom.conf"
install -D -m 0755 "$here/bkl-runner-stats" "$bin/bkl-runner-stats"
say "wrote $ROOT/etc/buildkit/buildkitd.toml, $units/{buildkit.service,bkl-runner-stats.service,ssh.service.d/buildkit-launcher-oom.conf}, $bin/bkl-runner-stats"

# 4. The services (a real server only). buildkit.service is Type=notify, so `restart` returns
# once buildkitd serves; readiness is still checked the way the launcher does before a build:
# buildctl waits for the daemon (bounded) and `debug workers` must list a worker. The socket
# file alone proves nothing: buildkitd creates it before it loads its workers.
if [ -z "$ROOT" ]; then
    [ -f /sys/fs/cgroup/cgroup.controllers ] || say "warning: not cgroup v2: bkl-runner-stats will not work"
    systemctl daemon-reload
    systemctl enable buildkit.service bkl-runner-stats.service
    systemctl restart bkl-runner-stats.service
    systemctl restart buildkit.service ||
        die "buildkit.service did not start: $(systemctl status buildkit.service --no-pager 2>&1 | tail -n 5)"
    workers=$("$bin/buildctl" --wait --timeout 60 debug workers 2>&1) ||
        die "buildkitd did not answer within 60 s: $(printf '%s\n' "$workers" | tail -n 1)"
    worker=$(printf '%s\n' "$workers" | sed -n 2p)
    [ -n "$worker" ] || die "buildkitd serves but lists no worker: $workers"
    say "buildkit.service is enabled and serving; worker: $worker"
    # The sshd drop-in applies from the next start of ssh.service, i.e. on every runner booted
    # from the snapshot (restarting sshd under the bake's own session is not worth the risk).
else
    say "BKL_ROOT is set (sandbox): apt and systemctl skipped"
fi
say "done"
