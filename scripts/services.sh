#!/usr/bin/env bash
# Make sure the services jobsched needs answer on this machine:
#   PostgreSQL 127.0.0.1:5432, RabbitMQ 127.0.0.1:5672, ZooKeeper 127.0.0.1:2181.
# Starts only what is not answering, so it is safe to run any time.
#
#   scripts/services.sh [zookeeper.sh options, e.g. --ensemble]
#
# Extra arguments are passed to `scripts/zookeeper.sh start`.
#
# What is not answering is started; what is not installed is installed first (Debian:
# apt-get, as root or with sudo) and configured for local development:
#   PostgreSQL (package postgresql): its newest cluster NNN/main listens on localhost:5432
#     and trusts connections from 127.0.0.1 and ::1 (any user, no password: the
#     development URL postgresql://postgres@127.0.0.1/jobsched), lines put first in its
#     pg_hba.conf under a "jobsched" comment;
#   RabbitMQ (package rabbitmq-server): the node rabbit@localhost, listening on 127.0.0.1
#     only (rabbitmq-env.conf); its stock user guest/guest, which may connect from
#     localhost only, is what jobsched uses;
#   ZooKeeper: scripts/zookeeper.sh.
# An installation that was there before is started, never reconfigured: when it does not
# accept jobsched's development credentials, a warning says what to change.
# Under systemd the services are started through it; without it, directly.
#
# JOBSCHED_SERVICES_DRY_RUN=1 prints every command that would install, configure or start
# something ("would run: ...") and runs none of them (the checks still run).
# tests/unit/test_services_script.py runs the dry run through every branch;
# scripts/fresh-machine-test.sh runs this script for real on a fresh Debian (as root).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PG_HOST=127.0.0.1
PG_PORT=5432
AMQP_HOST=127.0.0.1
AMQP_PORT=5672
DRY_RUN=${JOBSCHED_SERVICES_DRY_RUN:-0}
# Written first in pg_hba.conf of a cluster this script installed (first match wins).
PG_HBA_MARK="# jobsched (scripts/services.sh): local development, no password from this host"

log() {
    echo "services.sh: $*"
}

die() {
    echo "services.sh: $*" >&2
    exit 1
}

now() {
    echo "${EPOCHREALTIME:-$(date +%s.%N)}"
}

elapsed() {
    awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'
}

dry_run() {
    [[ $DRY_RUN == 1 ]]
}

systemd_running() {
    [[ -d /run/systemd/system ]]
}

# as_root CMD...: run CMD as root (with sudo when not root); in a dry run, print it.
as_root() {
    if dry_run; then
        log "would run: $(printf '%q ' "$@")"
        return 0
    fi
    if ((EUID == 0)); then
        "$@"
    else
        command -v sudo >/dev/null || die "need root (or sudo) to run: $*"
        sudo "$@"
    fi
}

# as_root_quiet CMD...: as_root, its output in a log file shown only when it fails.
as_root_quiet() {
    dry_run && {
        as_root "$@"
        return 0
    }
    local out
    out=$(mktemp /tmp/jobsched-services.XXXXXX.log)
    if as_root "$@" >"$out" 2>&1; then
        rm -f "$out"
    else
        tail -n 20 "$out" >&2
        die "failed: $* (output in $out)"
    fi
}

# apt_install PACKAGE...: install Debian packages (waits for another apt run's lock).
apt_install() {
    command -v apt-get >/dev/null ||
        die "$* missing and apt-get is not available: install $* by hand"
    local t0
    t0=$(now)
    log "installing $* (apt-get) ..."
    as_root_quiet env DEBIAN_FRONTEND=noninteractive \
        apt-get -qq -o DPkg::Lock::Timeout=300 update
    as_root_quiet env DEBIAN_FRONTEND=noninteractive \
        apt-get -qq -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "$@"
    dry_run || log "installed $* in $(elapsed "$t0")s"
}

# tcp_open HOST PORT: succeed if a TCP connection can be made.
tcp_open() {
    # shellcheck disable=SC2016 # $1/$2 are expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# --- PostgreSQL ------------------------------------------------------------------------

pg_ready() {
    if command -v pg_isready >/dev/null; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2
    else
        tcp_open "$PG_HOST" "$PG_PORT"
    fi
}

# The newest version with a cluster "main" under /etc/postgresql (fails if none).
pg_cluster_version() {
    local version
    [[ -d /etc/postgresql ]] || return 1
    version=$(find /etc/postgresql -mindepth 3 -maxdepth 3 -path '*/main/postgresql.conf' |
        awk -F/ '{ print $4 }' | sort -V | tail -n 1)
    [[ -n $version ]] && echo "$version"
}

# The newest PostgreSQL server installed (fails if none).
pg_server_version() {
    local version
    version=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' \
        2>/dev/null | awk -F/ '{ print $5 }' | sort -V | tail -n 1)
    [[ -n $version ]] && echo "$version"
}

pg_cluster_ctl() {  # VERSION ACTION: start or restart the cluster VERSION/main
    if systemd_running; then
        as_root systemctl "$2" "postgresql@$1-main"
    else
        as_root pg_ctlcluster --skip-systemctl-redirect "$1" main "$2"
    fi
}

# A cluster this script installed: localhost:5432, trust from this host.
configure_postgres() {
    local version=$1 hba=/etc/postgresql/$1/main/pg_hba.conf
    log "configuring PostgreSQL $version/main for local development"
    as_root pg_conftool "$version" main set listen_addresses localhost
    as_root pg_conftool "$version" main set port "$PG_PORT"
    if dry_run || ! grep -qF "$PG_HBA_MARK" "$hba" 2>/dev/null; then
        as_root sed -i "1i $PG_HBA_MARK\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust" "$hba"
    fi
}

# Warn when the development URL is refused (an installation configured otherwise).
check_postgres_login() {
    command -v psql >/dev/null || return 0
    psql -X -w -q -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atc 'SELECT 1' \
        >/dev/null 2>&1 && return 0
    log "WARNING: PostgreSQL answers but refuses postgresql://postgres@$PG_HOST:$PG_PORT/ without a password;" \
        "set JOBSCHED_DATABASE_URL with credentials, or allow it in pg_hba.conf:" \
        "host all all 127.0.0.1/32 trust"
}

ensure_postgres() {
    if pg_ready; then
        log "PostgreSQL answers on $PG_HOST:$PG_PORT"
        check_postgres_login
        return 0
    fi
    local installed=0 version t0 n action=start
    if ! command -v pg_ctlcluster >/dev/null || ! pg_server_version >/dev/null; then
        apt_install postgresql
        installed=1
    fi
    if ! version=$(pg_cluster_version); then
        # A server without a cluster (the package's own was dropped, or not created).
        version=$(pg_server_version) || version=
        [[ -n $version ]] || dry_run || die "apt-get installed postgresql but no server is under /usr/lib/postgresql"
        version=${version:-VERSION}
        log "creating the PostgreSQL cluster $version/main"
        as_root_quiet pg_createcluster "$version" main
        installed=1
    fi
    t0=$(now)
    if ((installed)); then
        configure_postgres "$version"
        # The package may have started it already, before the configuration.
        action=restart
    fi
    log "starting PostgreSQL $version/main"
    # It may be half-up (e.g. still recovering): a failed start is checked by pg_isready below.
    pg_cluster_ctl "$version" "$action" || log "PostgreSQL $version/main $action failed; waiting anyway"
    if dry_run; then
        log "would wait until PostgreSQL answers on $PG_HOST:$PG_PORT"
        return 0
    fi
    for ((n = 0; n < 60; n++)); do
        if pg_ready; then
            log "PostgreSQL ready in $(elapsed "$t0")s"
            check_postgres_login
            return 0
        fi
        sleep 0.5
    done
    die "PostgreSQL did not answer on $PG_HOST:$PG_PORT within 30s (see /var/log/postgresql/)"
}

# --- RabbitMQ --------------------------------------------------------------------------

# as_root_try CMD...: as_root, quietly, its failure ignored.
as_root_try() {
    if dry_run; then
        as_root "$@"
    else
        as_root "$@" >/dev/null 2>&1 || true
    fi
}

# The lines this script writes into rabbitmq-env.conf of an installation it made: the
# node, epmd and Erlang distribution listen on 127.0.0.1 only, under the node name
# rabbit@localhost (with epmd on 127.0.0.1, the default rabbit@HOSTNAME is unreachable
# where HOSTNAME resolves to another address, as Debian's 127.0.1.1).
RABBITMQ_ENV_LINES=(
    NODENAME=rabbit@localhost
    NODE_IP_ADDRESS=127.0.0.1
    ERL_EPMD_ADDRESS=127.0.0.1
    'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"'
)

configure_rabbitmq() {
    local env_conf=/etc/rabbitmq/rabbitmq-env.conf line
    # The package may have started a node with its defaults (every interface), and epmd
    # with it: stop both before the configuration changes the node's name.
    as_root_try rabbitmqctl -q stop
    as_root_try epmd -kill
    log "configuring RabbitMQ to listen on 127.0.0.1 as rabbit@localhost"
    for line in "${RABBITMQ_ENV_LINES[@]}"; do
        if dry_run || ! grep -qxF "$line" "$env_conf" 2>/dev/null; then
            # shellcheck disable=SC2016 # $1/$2 are expanded by the inner sh
            as_root sh -c 'printf "%s\n" "$1" >>"$2"' _ "$line" "$env_conf"
        fi
    done
}

rabbitmq_start() {
    if systemd_running; then
        as_root systemctl restart rabbitmq-server
        return
    fi
    # AMQP on 127.0.0.1; the node's name and epmd as its configuration says.
    as_root env RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 rabbitmq-server -detached
}

check_rabbitmq_login() {
    dry_run && {
        log "would check that guest/guest may log in"
        return 0
    }
    as_root rabbitmqctl -q authenticate_user guest guest >/dev/null 2>&1 && return 0
    log "WARNING: RabbitMQ refuses guest/guest; set JOBSCHED_AMQP_URL with a user it accepts"
}

ensure_rabbitmq() {
    if tcp_open "$AMQP_HOST" "$AMQP_PORT"; then
        log "RabbitMQ answers on $AMQP_HOST:$AMQP_PORT"
        return 0
    fi
    local t0 n
    if ! command -v rabbitmq-server >/dev/null; then
        apt_install rabbitmq-server
        configure_rabbitmq
    fi
    log "starting RabbitMQ"
    t0=$(now)
    rabbitmq_start || log "starting rabbitmq-server failed; waiting anyway"
    if dry_run; then
        log "would wait until RabbitMQ answers on $AMQP_HOST:$AMQP_PORT"
        check_rabbitmq_login
        return 0
    fi
    # await_startup fails at once until the node has registered with epmd: retry it,
    # for at most 90 s in all.
    local deadline=$((SECONDS + 90))
    until as_root rabbitmqctl -q await_startup --timeout 60 >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "RabbitMQ did not start within 90s (see /var/log/rabbitmq/)"
        sleep 1
    done
    for ((n = 0; n < 30; n++)); do
        if tcp_open "$AMQP_HOST" "$AMQP_PORT"; then
            log "RabbitMQ ready in $(elapsed "$t0")s"
            check_rabbitmq_login
            return 0
        fi
        sleep 0.5
    done
    die "RabbitMQ did not answer on $AMQP_HOST:$AMQP_PORT (see /var/log/rabbitmq/)"
}

t_all=$(now)
ensure_postgres
ensure_rabbitmq
if dry_run; then
    log "would run: $here/zookeeper.sh start $*"
    log "dry run: nothing was installed, configured or started"
    exit 0
fi
"$here/zookeeper.sh" start "$@"
log "all services answer ($(elapsed "$t_all")s)"
