#!/usr/bin/env bash
# Start, stop or inspect a local ZooKeeper for jobsched development and CI.
#
#   scripts/zookeeper.sh start|stop|status [--port 2181] [--dir DIR] [--ensemble] [--tick-ms 1000]
#
# Installs the Debian package `zookeeper` when its jar is missing, then runs the JVM
# directly (Debian's zkServer.sh hard-codes /etc/zookeeper/conf and /var/log/zookeeper
# and opens JMX on every interface). Everything listens on 127.0.0.1 only.
#
# Single node (default): client port PORT, files in DIR (default /tmp/jobsched-zk-PORT):
#   DIR/conf/zoo.cfg, DIR/conf/log4j.properties, DIR/data, DIR/zookeeper.log, DIR/zookeeper.pid
# --ensemble: three nodes on client ports PORT, PORT+1, PORT+2 (2181-2183 by default),
#   peer ports 2888-2890 / election ports 3888-3890 (shifted by PORT-2181), files in
#   DIR/zk1..zk3 (DIR default /tmp/jobsched-zk-ensemble-PORT).
# --tick-ms: ZooKeeper's tickTime (default 1000). A session ends between its timeout and
#   its timeout + one tick after its holder dies, so shorter ticks make take-overs tighter;
#   the session timeouts the servers accept are 2 to 20 ticks.
#
# `start` is idempotent: a node that already answers `srvr` with a `Mode:` line is left
# alone. It waits up to ZK_START_TIMEOUT seconds (default 30) for every node to serve,
# else prints the log tail and exits 1. `status` exits 0 when every node serves, else 3.
set -euo pipefail

ZK_JAR=/usr/share/java/zookeeper.jar
JAVA_DIR=/usr/share/java
START_TIMEOUT=${ZK_START_TIMEOUT:-30}

usage() {
    sed -n '2,21s/^# \{0,1\}//p' "$0"
}

die() {
    echo "zookeeper.sh: $*" >&2
    exit 1
}

now() {
    # Seconds since the epoch with microseconds (bash >= 5).
    echo "${EPOCHREALTIME:-$(date +%s.%N)}"
}

elapsed() {
    # elapsed START -> seconds since START, one decimal.
    awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'
}

# --- arguments -------------------------------------------------------------------------
action=${1:-}
case "$action" in
    start | stop | status) shift ;;
    -h | --help | help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        exit 2
        ;;
esac

port=2181
dir=
ensemble=0
tick_ms=1000
while (($#)); do
    case "$1" in
        --port)
            (($# >= 2)) || die "--port needs a value"
            port=$2
            shift 2
            ;;
        --port=*)
            port=${1#--port=}
            shift
            ;;
        --dir)
            (($# >= 2)) || die "--dir needs a value"
            dir=$2
            shift 2
            ;;
        --dir=*)
            dir=${1#--dir=}
            shift
            ;;
        --ensemble)
            ensemble=1
            shift
            ;;
        --tick-ms)
            (($# >= 2)) || die "--tick-ms needs a value"
            tick_ms=$2
            shift 2
            ;;
        --tick-ms=*)
            tick_ms=${1#--tick-ms=}
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
done
if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65533)); then
    die "invalid --port: $port"
fi

if ! [[ $tick_ms =~ ^[0-9]+$ ]] || ((tick_ms < 100 || tick_ms > 10000)); then
    die "invalid --tick-ms: $tick_ms (100-10000)"
fi

if [[ -z $dir ]]; then
    if ((ensemble)); then
        dir=/tmp/jobsched-zk-ensemble-$port
    else
        dir=/tmp/jobsched-zk-$port
    fi
fi

# --- helpers ---------------------------------------------------------------------------

# srvr PORT: print the answer to the `srvr` four-letter word, fail if nothing answers.
srvr() {
    # shellcheck disable=SC2016 # $1 is expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf srvr >&3 && cat <&3' \
        _ "$1" 2>/dev/null
}

# mode PORT: print the node's mode (standalone, leader, follower) if it serves clients.
mode() {
    local out
    out=$(srvr "$1") || return 1
    out=$(printf '%s\n' "$out" | sed -n 's/^Mode: *//p')
    [[ -n $out ]] || return 1
    printf '%s\n' "$out"
}

# pid_alive PIDFILE: print the pid if the file names a live ZooKeeper JVM.
pid_alive() {
    local pidfile=$1 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'QuorumPeerMain' || return 1
    echo "$pid"
}

# first_jar NAME...: print the first existing jar among /usr/share/java/NAME (globs ok).
first_jar() {
    local pattern f
    for pattern in "$@"; do
        for f in "$JAVA_DIR"/$pattern; do
            if [[ -f $f ]]; then
                echo "$f"
                return 0
            fi
        done
    done
    return 1
}

install_zookeeper() {
    [[ -f $ZK_JAR ]] && return 0
    command -v apt-get >/dev/null || die "$ZK_JAR is missing and apt-get is not available"
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "$ZK_JAR is missing; run as root to install it"
        sudo=(sudo)
    fi
    echo "zookeeper.sh: installing the Debian package zookeeper ..." >&2
    local t0
    t0=$(now)
    # Wait (rather than fail) if another apt/dpkg run holds the lock.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get -qq -o DPkg::Lock::Timeout=300 update >/dev/null
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get -qq -o DPkg::Lock::Timeout=300 install -y --no-install-recommends zookeeper >/dev/null
    [[ -f $ZK_JAR ]] || die "installed zookeeper but $ZK_JAR is still missing"
    echo "zookeeper.sh: installed in $(elapsed "$t0")s" >&2
}

classpath() {
    # conf dir first (log4j.properties), then the server jar (its manifest pulls in
    # jute, netty, slf4j-api, ...), then the slf4j->log4j binding and log4j 1.2:
    # without those two it logs nothing at all.
    local conf=$1 binding log4j
    binding=$(first_jar slf4j-log4j12.jar 'slf4j-log4j12-*.jar' 'slf4j-reload4j*.jar') ||
        die "no slf4j-log4j12 jar under $JAVA_DIR (package libslf4j-java)"
    log4j=$(first_jar log4j-1.2.jar 'log4j-1.2-*.jar' 'log4j-1.2*.jar' 'reload4j*.jar') ||
        die "no log4j 1.2 jar under $JAVA_DIR (package liblog4j1.2-java)"
    echo "$conf:$ZK_JAR:$binding:$log4j"
}

# write_conf NODEDIR PORT [MYID SERVERLINES]
write_conf() {
    local nodedir=$1 cport=$2 myid=${3:-} servers=${4:-}
    mkdir -p "$nodedir/conf" "$nodedir/data"
    {
        echo "# written by scripts/zookeeper.sh"
        # 1 s ticks by default: sessions expire within a tick of their timeout (2 s ticks
        # add up to 2 s to every leader take-over) and timeouts down to 2 ticks are allowed.
        echo "tickTime=$tick_ms"
        echo "initLimit=20"
        echo "syncLimit=10"
        echo "dataDir=$nodedir/data"
        echo "clientPort=$cport"
        echo "clientPortAddress=127.0.0.1"
        echo "admin.enableServer=false"
        echo "4lw.commands.whitelist=*"
        echo "maxClientCnxns=0"
        echo "autopurge.purgeInterval=1"
        if [[ -n $myid ]]; then
            printf '%s\n' "$servers"
        fi
    } >"$nodedir/conf/zoo.cfg"
    if [[ -n $myid ]]; then
        echo "$myid" >"$nodedir/data/myid"
    fi
    cat >"$nodedir/conf/log4j.properties" <<'EOF'
# written by scripts/zookeeper.sh: everything to stdout, which goes to zookeeper.log
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} [myid:%X{myid}] - %-5p [%t:%C{1}@%L] - %m%n
EOF
}

# launch NODEDIR: start the JVM in the background, record its pid.
launch() {
    local nodedir=$1 cp pid
    cp=$(classpath "$nodedir/conf")
    command -v java >/dev/null || die "java not found (install default-jre-headless)"
    : >"$nodedir/zookeeper.log"
    # setsid: own session, so the caller's process group, terminal or job control
    # cannot take the server down with it; nohup for SIGHUP as well.
    setsid nohup java -Xmx256m -XX:+UseSerialGC \
        -Dzookeeper.log.dir="$nodedir" \
        -Dzookeeper.root.logger=INFO,CONSOLE \
        -Dlog4j.configuration="file:$nodedir/conf/log4j.properties" \
        -cp "$cp" \
        org.apache.zookeeper.server.quorum.QuorumPeerMain "$nodedir/conf/zoo.cfg" \
        >>"$nodedir/zookeeper.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$nodedir/zookeeper.pid"
}

# Per-node description: arrays filled by plan().
node_dirs=()
node_ports=()
node_ids=()
servers=
plan() {
    if ((ensemble)); then
        local i off=$((port - 2181))
        servers=
        for i in 1 2 3; do
            node_dirs+=("$dir/zk$i")
            node_ports+=($((port + i - 1)))
            node_ids+=("$i")
            servers+="server.$i=127.0.0.1:$((2888 + off + i - 1)):$((3888 + off + i - 1))"$'\n'
        done
    else
        node_dirs=("$dir")
        node_ports=("$port")
        node_ids=("")
    fi
}

log_tail() {
    local nodedir=$1
    echo "---- last lines of $nodedir/zookeeper.log ----" >&2
    tail -n 40 "$nodedir/zookeeper.log" >&2 2>/dev/null || true
    echo "----" >&2
}

do_start() {
    local t0 i m need=() pid
    t0=$(now)
    plan
    for i in "${!node_ports[@]}"; do
        if m=$(mode "${node_ports[$i]}"); then
            if ((ensemble)) && [[ $m == standalone ]]; then
                die "a standalone ZooKeeper already serves 127.0.0.1:${node_ports[$i]}; stop it before starting an ensemble"
            fi
            echo "zookeeper already serving on 127.0.0.1:${node_ports[$i]} (Mode: $m)"
        else
            need+=("$i")
        fi
    done
    ((${#need[@]})) || return 0

    install_zookeeper
    for i in "${need[@]}"; do
        if pid=$(pid_alive "${node_dirs[$i]}/zookeeper.pid"); then
            # Launched earlier and still coming up (or an ensemble node waiting for quorum).
            echo "zookeeper on port ${node_ports[$i]} already launched (pid $pid); waiting"
            continue
        fi
        write_conf "${node_dirs[$i]}" "${node_ports[$i]}" "${node_ids[$i]}" "$servers"
        launch "${node_dirs[$i]}"
    done

    local deadline pending
    deadline=$(awk -v t="$(now)" -v d="$START_TIMEOUT" 'BEGIN { printf "%d", t + d }')
    while :; do
        pending=()
        for i in "${need[@]}"; do
            mode "${node_ports[$i]}" >/dev/null || pending+=("$i")
        done
        ((${#pending[@]})) || break
        for i in "${pending[@]}"; do
            if ! pid_alive "${node_dirs[$i]}/zookeeper.pid" >/dev/null; then
                echo "zookeeper.sh: the JVM for port ${node_ports[$i]} exited" >&2
                log_tail "${node_dirs[$i]}"
                exit 1
            fi
        done
        if (($(date +%s) >= deadline)); then
            for i in "${pending[@]}"; do
                echo "zookeeper.sh: 127.0.0.1:${node_ports[$i]} not serving after ${START_TIMEOUT}s" >&2
                log_tail "${node_dirs[$i]}"
            done
            exit 1
        fi
        sleep 0.1
    done
    for i in "${need[@]}"; do
        echo "zookeeper serving on 127.0.0.1:${node_ports[$i]} (Mode: $(mode "${node_ports[$i]}"), pid $(<"${node_dirs[$i]}/zookeeper.pid"), dir ${node_dirs[$i]})"
    done
    echo "zookeeper ready in $(elapsed "$t0")s"
}

do_stop() {
    local i pid n rc=0 pids=() ports=()
    plan
    # SIGTERM every node first, then wait for all: an ensemble stops in one JVM shutdown.
    for i in "${!node_ports[@]}"; do
        if pid=$(pid_alive "${node_dirs[$i]}/zookeeper.pid"); then
            kill "$pid" 2>/dev/null || true
            pids+=("$pid")
            ports+=("${node_ports[$i]}")
        elif mode "${node_ports[$i]}" >/dev/null; then
            echo "zookeeper.sh: something serves 127.0.0.1:${node_ports[$i]} but was not started from ${node_dirs[$i]}; not touching it" >&2
            rc=1
        fi
        rm -f "${node_dirs[$i]}/zookeeper.pid"
    done
    for i in "${!pids[@]}"; do
        pid=${pids[$i]}
        for ((n = 0; n < 100; n++)); do
            [[ -e /proc/$pid ]] || break
            sleep 0.1
        done
        if [[ -e /proc/$pid ]]; then
            echo "zookeeper.sh: pid $pid ignored SIGTERM for 10s; sending SIGKILL" >&2
            kill -9 "$pid" 2>/dev/null || true
        fi
        echo "zookeeper on port ${ports[$i]} stopped (pid $pid)"
    done
    ((${#pids[@]} || rc)) || echo "zookeeper not running"
    return "$rc"
}

do_status() {
    local i m rc=0 pid
    plan
    for i in "${!node_ports[@]}"; do
        if m=$(mode "${node_ports[$i]}"); then
            pid=$(pid_alive "${node_dirs[$i]}/zookeeper.pid") || pid="not started by this script"
            echo "127.0.0.1:${node_ports[$i]}: serving, Mode: $m (pid $pid)"
        else
            echo "127.0.0.1:${node_ports[$i]}: not serving"
            rc=3
        fi
    done
    return "$rc"
}

case "$action" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
esac
