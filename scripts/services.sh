#!/usr/bin/env bash
# Make sure the services jobsched needs answer on this machine:
#   PostgreSQL 127.0.0.1:5432, RabbitMQ 127.0.0.1:5672, ZooKeeper 127.0.0.1:2181.
# Starts only what is not answering (without systemd), so it is safe to run any time.
#
#   scripts/services.sh [zookeeper.sh options, e.g. --ensemble]
#
# Extra arguments are passed to `scripts/zookeeper.sh start`.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PG_HOST=127.0.0.1
PG_PORT=5432
AMQP_HOST=127.0.0.1
AMQP_PORT=5672

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

# tcp_open HOST PORT: succeed if a TCP connection can be made.
tcp_open() {
    # shellcheck disable=SC2016 # $1/$2 are expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

pg_ready() {
    if command -v pg_isready >/dev/null; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2
    else
        tcp_open "$PG_HOST" "$PG_PORT"
    fi
}

ensure_postgres() {
    if pg_ready; then
        log "PostgreSQL answers on $PG_HOST:$PG_PORT"
        return 0
    fi
    command -v pg_ctlcluster >/dev/null ||
        die "PostgreSQL is not answering on $PG_HOST:$PG_PORT and pg_ctlcluster is missing (apt-get install postgresql)"
    local versions=() version t0 n
    if [[ -d /etc/postgresql ]]; then
        mapfile -t versions < <(ls /etc/postgresql)
    fi
    ((${#versions[@]})) || die "no PostgreSQL cluster under /etc/postgresql (apt-get install postgresql)"
    # Newest version if several are installed.
    version=$(printf '%s\n' "${versions[@]}" | sort -V | tail -n 1)
    [[ -f /etc/postgresql/$version/main/postgresql.conf ]] ||
        die "no cluster $version/main under /etc/postgresql"
    log "starting PostgreSQL $version/main"
    t0=$(now)
    # It may be half-up (e.g. still recovering): a failed start is checked by pg_isready below.
    pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
        log "pg_ctlcluster $version main start failed; waiting anyway"
    for ((n = 0; n < 60; n++)); do
        if pg_ready; then
            log "PostgreSQL ready in $(elapsed "$t0")s"
            return 0
        fi
        sleep 0.5
    done
    die "PostgreSQL did not answer on $PG_HOST:$PG_PORT within 30s (see /var/log/postgresql/)"
}

ensure_rabbitmq() {
    if tcp_open "$AMQP_HOST" "$AMQP_PORT"; then
        log "RabbitMQ answers on $AMQP_HOST:$AMQP_PORT"
        return 0
    fi
    command -v rabbitmq-server >/dev/null ||
        die "RabbitMQ is not answering on $AMQP_HOST:$AMQP_PORT and rabbitmq-server is missing (apt-get install rabbitmq-server)"
    local t0 n
    log "starting RabbitMQ"
    t0=$(now)
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 ERL_EPMD_ADDRESS=127.0.0.1 rabbitmq-server -detached ||
        log "rabbitmq-server -detached failed; waiting anyway"
    # await_startup fails at once until the node has registered with epmd: retry it,
    # for at most 90 s in all.
    local deadline=$((SECONDS + 90))
    until rabbitmqctl -q await_startup --timeout 60 >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "RabbitMQ did not start within 90s (see /var/log/rabbitmq/)"
        sleep 1
    done
    for ((n = 0; n < 30; n++)); do
        if tcp_open "$AMQP_HOST" "$AMQP_PORT"; then
            log "RabbitMQ ready in $(elapsed "$t0")s"
            return 0
        fi
        sleep 0.5
    done
    die "RabbitMQ did not answer on $AMQP_HOST:$AMQP_PORT (see /var/log/rabbitmq/)"
}

t_all=$(now)
ensure_postgres
ensure_rabbitmq
"$here/zookeeper.sh" start "$@"
log "all services answer ($(elapsed "$t_all")s)"
