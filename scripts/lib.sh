# scripts/lib.sh: shell helpers shared by the demo and the benchmarks.
# Source it; it keeps the PIDs it starts in PIDS and stops them on exit.
#   BIN           programs (default build/bin, or $PS_BIN)
#   ps_tmpdir N   LIB_TMP = a fresh temporary directory, removed on exit unless KEEP=1
#   free_port [N] N (default 1) distinct TCP ports on 127.0.0.1 that were
#                 free a moment ago, one per line
#   wait_port P S [PID]
#                 until something listens on 127.0.0.1:P (at most S seconds;
#                 fails at once when process PID is gone)
#   start_cluster DIR N [EXTRA_YAML_FILE]
#                 writes DIR/cluster.yaml for N shards on fresh ports (EXTRA
#                 appended), starts them (PIDs in PIDS and SHARD_PIDS), waits;
#                 its security section is $LIB_SECURITY (printf %b; default
#                 "security:\n  mode: none")
#   stop_pid PID  SIGTERM, wait at most 10 s, SIGKILL; drops PID from PIDS
#   lib_usage     prints the calling script's header comment (its --help)
# The demo and the benchmarks first cd to the repository root (cd
# "$(dirname "$0")/.."), so that they run from any directory: their
# relative paths (scripts/..., config/..., build/...) and a relative
# PS_BIN or PS_DATA are taken from there.

BIN=${PS_BIN:-build/bin}
PIDS=()
LIB_TMP=""

lib_cleanup() {
  local rc=$? pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "$LIB_TMP" ]; then
    if [ "${KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
      echo "logs and outputs kept in $LIB_TMP" >&2
    else
      rm -rf "$LIB_TMP"
    fi
  fi
  exit $rc
}
trap lib_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ps_tmpdir() { # sets LIB_TMP (not in a subshell: cleanup needs it)
  LIB_TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
}

lib_usage() { # $0 as started may be relative to a directory the script has left
  local self=$0
  [ -r "$self" ] || self=scripts/${0##*/}
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$self"
}

free_port() { # the sockets stay bound until all are picked: no repeats
  python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))' "${1:-1}"
}

wait_port() {
  local end=$((SECONDS + $2))
  while [ $SECONDS -lt "$end" ]; do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then
      echo "process $3 ended before listening on port $1" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "nothing listens on port $1 after $2 s" >&2
  return 1
}

start_cluster() {
  local dir=$1 n=$2 extra=${3:-} i
  mkdir -p "$dir"
  local ports
  mapfile -t ports < <(free_port $((2 * n)))
  GPORT=(); CPORT=()
  {
    echo "cluster: bench"
    echo "chunk_elems: 65536"
    echo "durability:"
    echo "  mode: periodic"
    echo "  flush_interval_ms: 1000"
    printf '%b\n' "${LIB_SECURITY:-security:\n  mode: none}"
    echo "shards:"
    for ((i = 0; i < n; i++)); do
      GPORT[$i]=${ports[2 * i]}; CPORT[$i]=${ports[2 * i + 1]}
      echo "  - id: $i"
      echo "    grpc: 127.0.0.1:${GPORT[$i]}"
      echo "    channel: 127.0.0.1:${CPORT[$i]}"
      echo "    data_dir: $dir/shard$i"
    done
    [ -z "$extra" ] || cat "$extra"
  } > "$dir/cluster.yaml"
  SHARD_PIDS=()
  for ((i = 0; i < n; i++)); do
    "$BIN/psd" --config "$dir/cluster.yaml" --shard "$i" >> "$dir/psd$i.log" 2>&1 &
    PIDS+=($!); SHARD_PIDS+=($!)
  done
  for ((i = 0; i < n; i++)); do
    wait_port "${CPORT[$i]}" 30 "${SHARD_PIDS[$i]}" && wait_port "${GPORT[$i]}" 10 "${SHARD_PIDS[$i]}" ||
      { cat "$dir"/psd*.log >&2; exit 1; }
  done
}

stop_pid() {
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
