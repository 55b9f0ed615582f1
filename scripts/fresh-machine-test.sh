#!/usr/bin/env bash
# scripts/services.sh on a fresh Debian machine, for real, without touching this one.
#
#   scripts/fresh-machine-test.sh [--keep]      (as root; a few minutes; ~150 MB downloaded)
#
# Builds a minimal Debian of this machine's release with debootstrap (installed with
# apt-get when missing; the mirror is the one this machine's apt uses), downloads
# postgresql and rabbitmq-server into its apt cache, then runs scripts/services.sh inside
# it in network, PID and mount namespaces of their own (so its 5432/5672 do not meet this
# machine's, and every process it starts ends with the test). ZooKeeper is a stub there:
# scripts/zookeeper.sh has its own install path. Checks, each failing the test:
#   1. nothing installed: services.sh installs, configures and starts both, exit 0;
#      PostgreSQL answers postgres@127.0.0.1 without a password, listens on localhost:5432
#      only; RabbitMQ listens on 127.0.0.1:5672 only and accepts guest/guest;
#   2. run again: both answer, nothing done;
#   3. both stopped: services.sh starts them again.
# The folder (under /tmp) is removed at the end unless --keep.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
keep=0
[[ ${1:-} == --keep ]] && keep=1
((EUID == 0)) || {
    echo "fresh-machine-test.sh: run as root (debootstrap, chroot, unshare)" >&2
    exit 2
}

log() {
    echo "fresh-machine-test.sh: $*"
}

# shellcheck source=/dev/null
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:?}")
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
[[ -n $mirror ]] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
[[ -n $mirror ]] || {
    echo "fresh-machine-test.sh: no apt mirror found in /etc/apt/sources.list*" >&2
    exit 2
}
if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get -qq install -y debootstrap >/dev/null
fi

root=$(mktemp -d /tmp/jobsched-fresh-machine.XXXXXX)
chmod 755 "$root"  # it is the fresh system's /: mktemp made it 0700
cleanup() {
    if ((keep)); then
        log "kept $root"
    else
        rm -rf --one-file-system "$root"
    fi
}
trap cleanup EXIT

log "debootstrap $codename (minbase) into $root"
debootstrap --variant=minbase "$codename" "$root" "$mirror" >"$root.debootstrap.log" 2>&1 || {
    tail -n 20 "$root.debootstrap.log" >&2
    exit 1
}
rm -f "$root.debootstrap.log"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# As Debian's installer writes it: the host name on 127.0.1.1.
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
    "$(hostname)" >"$root/etc/hosts"

log "downloading postgresql and rabbitmq-server into its apt cache"
chroot "$root" sh -c 'apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -qq \
    install -y --no-install-recommends --download-only postgresql rabbitmq-server' >/dev/null

mkdir -p "$root/jobsched/scripts"
cp "$here/services.sh" "$root/jobsched/scripts/"
printf '#!/bin/sh\necho "zookeeper.sh (a stub in this test): $*"\n' >"$root/jobsched/scripts/zookeeper.sh"
chmod +x "$root/jobsched/scripts/"*.sh
cat >"$root/jobsched/inside.sh" <<'INSIDE'
#!/bin/bash
# Runs in the fresh system, in namespaces of its own; apt works from its cache.
set -uo pipefail
mount -t proc proc /proc
mkdir -p /dev/shm && mount -t tmpfs shm /dev/shm
failed=0
check() {  # check DESCRIPTION COMMAND...
    if "${@:2}"; then echo "ok: $1"; else echo "FAILED: $1"; failed=1; fi
}
listening() {  # local addresses in LISTEN state, /proc/net/tcp hex form
    awk 'NR > 1 && $4 == "0A" { print $2 }' /proc/net/tcp /proc/net/tcp6 | sort -u
}
only_local() {  # PORT (hex): listened on, and only on 127.0.0.1 or ::1
    local port=$1 found=0 address
    while read -r address; do
        [[ ${address##*:} == "$port" ]] || continue
        found=1
        case ${address%:*} in
            0100007F | 00000000000000000000000001000000) ;;
            *) return 1 ;;
        esac
    done < <(listening)
    ((found))
}
services() { /jobsched/scripts/services.sh; }
stop_both() {
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main stop
    rabbitmqctl -q stop >/dev/null 2>&1
}

check "nothing installed before" bash -c '! command -v pg_ctlcluster && ! command -v rabbitmq-server'
check "1. services.sh installs, configures and starts both" services
check "PostgreSQL accepts postgres@127.0.0.1 without a password" \
    psql -X -w -q -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1'
check "PostgreSQL listens on localhost:5432 only" only_local 1538
check "RabbitMQ listens on 127.0.0.1:5672 only" only_local 1628
check "RabbitMQ's Erlang distribution listens on loopback only" only_local 6448
check "RabbitMQ accepts guest/guest" rabbitmqctl -q authenticate_user guest guest
check "2. run again" services
stop_both
check "both stopped" bash -c '! pg_isready -q -h 127.0.0.1 -t 1'
check "3. services.sh starts them again" services
check "PostgreSQL answers again" pg_isready -q -h 127.0.0.1 -t 5
check "RabbitMQ answers again" rabbitmqctl -q await_startup --timeout 30
stop_both
exit "$failed"
INSIDE
chmod +x "$root/jobsched/inside.sh"

log "running scripts/services.sh in it"
if unshare --net --pid --fork --mount sh -c "ip link set lo up && exec chroot '$root' /jobsched/inside.sh"; then
    log "passed"
else
    log "FAILED"
    exit 1
fi
