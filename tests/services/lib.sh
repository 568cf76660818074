# shellcheck shell=bash
# Helpers shared by the tests/services scripts; sourced, never run.
# Nothing here touches a system-wide server: every path is inside the
# services folder made by `start` or inside the Kafka cache.

SERVICES_HOME=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
SVC_PROG=services

# Defaults, each overridable from the environment (see README.md).
: "${MQB_KAFKA_VERSION:=3.9.2}"
: "${MQB_KAFKA_PARTITIONS:=4}"
: "${MQB_KAFKA_HEAP:=512m}"
: "${MQB_SERVICES_TIMEOUT:=60}"      # seconds a server may take to become ready
: "${MQB_SERVICES_STOP_TIMEOUT:=30}" # seconds a server may take to stop
: "${MQB_SERVICES_TMPDIR:=/tmp}"     # parent of the services folders

# The marker file that proves a folder was made by `start` (stop refuses others).
# shellcheck disable=SC2034 # used by the scripts that source this file
SVC_MARKER=.mqb-services

svc_init() { SVC_PROG=$1; }

say() { printf '%s: %s\n' "tests/services/$SVC_PROG" "$*" >&2; }

die() {
  say "error: $*"
  exit 1
}

# Prints the last lines of a log file to stderr, framed, if it exists.
show_log() {
  local file=$1 lines=${2:-30}
  [[ -s $file ]] || return 0
  printf -- '----- last %s lines of %s\n' "$lines" "$file" >&2
  tail -n "$lines" "$file" >&2
  printf -- '-----\n' >&2
}

# Microseconds since the epoch (no subprocess).
now() {
  local t=${EPOCHREALTIME/[.,]/}
  printf '%s' "$((10#$t))"
}

# Seconds elapsed since START (a value of now), with one decimal.
elapsed() {
  local d=$(($(now) - $1))
  printf '%d.%d' "$((d / 1000000))" "$((d / 100000 % 10))"
}

# 0 when a process exists and is not a zombie.
pid_running() {
  local pid=$1 stat
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  { read -r stat <"/proc/$pid/stat"; } 2>/dev/null || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# 0 when process PID belongs to services folder DIR: its working directory or
# its command line names the folder (guards against a recycled pid).
pid_in_dir() {
  local pid=$1 dir=$2 cwd
  cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null || true)
  [[ $cwd == "$dir" || $cwd == "$dir"/* ]] && return 0
  grep -qaF -- "$dir" "/proc/$pid/cmdline" 2>/dev/null
}

# Polls CMD... every 0.1 s until it succeeds (return 0), process PID (if not
# empty) is gone (return 2) or TIMEOUT (whole) seconds have passed (return 1).
poll_until() {
  local timeout=$1 pid=$2
  shift 2
  local deadline=$(($(now) + timeout * 1000000))
  while :; do
    "$@" >/dev/null 2>&1 && return 0
    if [[ -n $pid ]] && ! pid_running "$pid"; then
      return 2
    fi
    (($(now) > deadline)) && return 1
    sleep 0.1
  done
}

# Sends SIGTERM to PID, waits up to TIMEOUT seconds, then SIGKILL. Returns 0
# when the process is gone, 1 if it survived even SIGKILL (for 5 s).
kill_wait() {
  local pid=$1 timeout=$2 name=$3
  pid_running "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  if ! poll_until "$timeout" "" pid_gone "$pid"; then
    say "$name (pid $pid) did not stop within ${timeout}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    poll_until 5 "" pid_gone "$pid" || return 1
  fi
  return 0
}

pid_gone() { ! pid_running "$1"; }

# Prints N free TCP ports on 127.0.0.1, space separated, chosen by the kernel.
free_ports() {
  python3 "$SERVICES_HOME/probe.py" ports "$1" | tr '\n' ' '
}

# The bin folder of the newest PostgreSQL server installed from Debian
# packages (/usr/lib/postgresql/VERSION/bin), or MQB_PG_BINDIR.
pg_bindir() {
  if [[ -n ${MQB_PG_BINDIR:-} ]]; then
    printf '%s\n' "$MQB_PG_BINDIR"
    return 0
  fi
  local d v best='' bestv=-1
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]] || continue
    v=${d#/usr/lib/postgresql/}
    v=${v%%/*}
    [[ $v =~ ^[0-9]+$ ]] || continue
    if ((v > bestv)); then
      best=$d bestv=$v
    fi
  done
  [[ -n $best ]] && printf '%s\n' "$best"
}

# The OS user that owns and runs PostgreSQL: `postgres` when we are root
# (the server refuses to run as root), else ourselves.
pg_os_user() {
  if ((EUID == 0)); then echo postgres; else id -un; fi
}

# Runs CMD... as the PostgreSQL OS user, from / (so a private working
# directory of the caller does not matter).
as_pg_user() {
  if ((EUID == 0)); then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && "$@")
  fi
}

# The java used for Kafka: MQB_JAVA, else Debian's default JDK, else PATH.
# JAVA_HOME is deliberately not used: another tool's JAVA_HOME (a newer JDK)
# must not change which Java the test broker runs on.
java_bin() {
  if [[ -n ${MQB_JAVA:-} ]]; then
    printf '%s\n' "$MQB_JAVA"
  elif [[ -x /usr/lib/jvm/default-java/bin/java ]]; then
    printf '%s\n' /usr/lib/jvm/default-java/bin/java
  else
    command -v java
  fi
}

# Where kafka-fetch keeps the jars of MQB_KAFKA_VERSION.
kafka_cache_dir() {
  printf '%s/kafka-%s\n' "${MQB_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mqbridge}" \
    "$MQB_KAFKA_VERSION"
}

# JVM options of a short-lived Kafka tool: small heap, fast start, warnings
# only, on stderr.
kafka_tool_jvm_opts() {
  printf '%s\n' -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    "-Dlog4j.configuration=file:$SERVICES_HOME/kafka/log4j-tools.properties"
}

# Formats VALUE for a KEY=VALUE settings line: bare when it is made of safe
# characters, else in single quotes. Values never contain a single quote.
env_quote() {
  local v=$1
  if [[ $v == *"'"* ]]; then
    die "setting value contains a single quote: $v"
  elif [[ $v =~ ^[A-Za-z0-9_@%+=:,./-]*$ ]]; then
    printf '%s' "$v"
  else
    printf "'%s'" "$v"
  fi
}

# env_parse set|export: reads KEY=VALUE settings lines (as printed by start)
# from stdin into shell variables, only MQB_* keys, quotes removed, nothing
# evaluated; with "export" the variables are also exported.
env_parse() {
  local line key value
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line =~ ^(MQB_[A-Z0-9_]+)=(.*)$ ]] || continue
    key=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
    if [[ $value == \'*\' ]]; then
      value=${value#\'}
      value=${value%\'}
    fi
    printf -v "$key" '%s' "$value"
    if [[ $1 == export ]]; then
      export "${key?}"
    fi
  done
}

# Reads the settings file DIR/env (see env_parse), if there is one.
env_load() {
  [[ -f $1/env ]] || return 0
  env_parse set <"$1/env"
}

# The parent pid of PID (empty when unknown).
ppid_of() {
  local stat
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 0
  stat=${stat##*) }
  stat=${stat#* }
  printf '%s' "${stat%% *}"
}

# 0 when PID is this shell, one of its ancestors or one of its descendants
# (subshells of a script share its command line, which may name the folder).
pid_related() {
  local pid=$1 p
  p=$$
  while [[ -n $p && $p != 0 ]]; do
    [[ $p == "$pid" ]] && return 0
    p=$(ppid_of "$p")
  done
  p=$pid
  while [[ -n $p && $p != 0 && $p != 1 ]]; do
    [[ $p == "$$" ]] && return 0
    p=$(ppid_of "$p")
  done
  return 1
}

# Pids of the processes tied to services folder DIR: working directory inside
# it, or the folder named on the command line; not this shell's own family.
pids_in_dir() {
  local dir=$1 p
  for p in $({
    find /proc -mindepth 2 -maxdepth 2 -name cwd \( -lname "$dir" -o -lname "$dir/*" \) \
      2>/dev/null | cut -d/ -f3
    grep -laF -- "$dir" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3
  } | sort -un); do
    pid_running "$p" || continue
    pid_related "$p" && continue
    printf '%s\n' "$p"
  done
}

# ---- launching the servers (shared by start and ctl)

# Launches CMD... in the background in its own session, from folder CWD, with
# all output into LOG and no inherited stdin/stdout; sets LAUNCHED_PID.
# (A background subshell of a script is no process group leader, so setsid
# runs CMD in place and $! is the server's own pid.)
launch() {
  local cwd=$1 log=$2
  shift 2
  (cd "$cwd" && exec setsid "$@") </dev/null >>"$log" 2>&1 3>&- &
  LAUNCHED_PID=$!
}

# Launches redis-server on PORT with its files in RDIR (no persistence of its
# own; `ctl stop redis` saves RDIR/dump.rdb, which the next launch loads);
# writes RDIR/redis.pid and sets LAUNCHED_PID.
redis_server_launch() {
  local rdir=$1 port=$2
  launch "$rdir" "$rdir/redis.out" redis-server --bind 127.0.0.1 --port "$port" \
    --protected-mode yes --save "" --appendonly no --daemonize no --dir "$rdir" \
    --logfile "$rdir/redis.log" --loglevel notice
  printf '%s\n' "$LAUNCHED_PID" >"$rdir/redis.pid"
}

# Launches the Kafka broker of KDIR (KDIR/server.properties, storage already
# formatted) with JAVA and the jars in LIB; writes KDIR/kafka.pid and sets
# LAUNCHED_PID.
kafka_server_launch() {
  local kdir=$1 java=$2 lib=$3
  # shellcheck disable=SC2206 # MQB_KAFKA_JAVA_OPTS is a list of words
  local -a opts=(-Xms128m "-Xmx$MQB_KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
    "-Dkafka.logs.dir=$kdir" "-Dlog4j.configuration=file:$SERVICES_HOME/kafka/log4j-server.properties"
    ${MQB_KAFKA_JAVA_OPTS:-})
  launch "$kdir" "$kdir/kafka.out" "$java" "${opts[@]}" -cp "$lib/*" kafka.Kafka \
    "$kdir/server.properties"
  printf '%s\n' "$LAUNCHED_PID" >"$kdir/kafka.pid"
}

# 0 when redis on PORT answers PING. (redis-cli has no timeout of its own: a
# foreign listener on the port could hold it forever.)
redis_ping() {
  [[ $(timeout 2 redis-cli -h 127.0.0.1 -p "$1" PING 2>/dev/null) == PONG ]]
}
