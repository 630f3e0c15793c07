#!/usr/bin/env bash
# Cluster benchmark (issue 16): Waxwing nodes on one PostgreSQL and one Redis.
#
#   bench/cluster.sh                    both parts
#   PARTS=chat bench/cluster.sh         1:1 chat, same node vs across nodes, 1/2/3 nodes
#   PARTS=sessions bench/cluster.sh     SESSIONS idle TLS sessions over SESSION_NODES nodes
#
# Writes bench/results/<date>-cluster.md and the raw JSON lines next to it.
# Only 127.0.0.1 is used. See bench/README.md, "A cluster".
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
case ${1:-} in
-h | --help)
	sed -n '2,9p' "$0"
	exit 0
	;;
esac

# ---- parameters (override with the environment) ---------------------------
: "${PARTS:=chat sessions}"
: "${CLUSTER_SIZES:=1 2 3}"
: "${PAIRS:=50}" "${WINDOW:=32}" "${WARMUP:=2}" "${DURATION:=10}" "${RATE:=5000}"
: "${SESSIONS:=100000}" "${SESSION_NODES:=6}"
# Messages between nodes while the sessions are held (total msgs/s).
: "${SESSIONS_RATE:=2000}"
: "${CONCURRENCY:=100}"
: "${PASSWORD:=benchpass1}"
: "${CARGO_TARGET_DIR:=$ROOT/target}"
export CARGO_TARGET_DIR
DOMAIN=bench.localhost
BASE_PORT=46000 # node K listens on BASE_PORT+K

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---- prerequisites ---------------------------------------------------------
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
need_pkgs=()
[[ -n $PG_BIN ]] || need_pkgs+=(postgresql)
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
command -v openssl >/dev/null || need_pkgs+=(openssl)
if ((${#need_pkgs[@]})); then
	log "installing ${need_pkgs[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
	# The packages start their system services; we run our own instances.
	systemctl stop postgresql redis-server 2>/dev/null || service postgresql stop 2>/dev/null || true
	PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi

WAXWING=$CARGO_TARGET_DIR/release/waxwing
BENCH=$CARGO_TARGET_DIR/release/waxwing-bench
if [[ ${NO_BUILD:-0} != 1 ]]; then
	log "building waxwing and waxwing-bench (release)"
	(cd "$ROOT" && cargo build --release -q -p waxwing -p waxwing-bench)
fi

# Each node and each generator stays under this machine's 20,000 open files.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
PER_NODE=$(((SESSIONS + SESSION_NODES - 1) / SESSION_NODES))
if ((PER_NODE + 200 > $(ulimit -n))); then
	echo "SESSIONS/SESSION_NODES = $PER_NODE sessions per node exceeds the open-file limit $(ulimit -n)" >&2
	exit 2
fi

RUN=$(mktemp -d /tmp/waxwing-cluster.XXXXXX)
chmod 755 "$RUN"
RESULTS=$RUN/results.jsonl
: >"$RESULTS"
log "run directory $RUN"

bench_certificate "$RUN" "$DOMAIN"
chmod 644 "$RUN/bench.key"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

stop_pid() { # pid
	kill -TERM "$1" 2>/dev/null || return 0
	local i
	for ((i = 0; i < 300; i++)); do
		kill -0 "$1" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# ---- PostgreSQL and Redis, ours, on loopback --------------------------------
# Default durability (fsync on): what an operator runs. The chat rows touch
# neither engine per message (archiving is off as in bench/run.sh).
PG_PORT=$(free_port)
mkdir -p "$RUN/pg"
chown postgres:postgres "$RUN/pg"
setpriv --reuid=postgres --regid=postgres --init-groups -- "$PG_BIN/initdb" -D "$RUN/pg/data" \
	-A trust -U postgres -E UTF8 --locale=C.UTF-8 --no-instructions >"$RUN/pg/initdb.log"
setpriv --reuid=postgres --regid=postgres --init-groups -- "$PG_BIN/postgres" -D "$RUN/pg/data" \
	-c listen_addresses=127.0.0.1 -c "port=$PG_PORT" -c "unix_socket_directories=$RUN/pg" \
	-c max_connections=400 >"$RUN/pg/log" 2>&1 &
PG_PID=$!
wait_port "$PG_PORT" "$PG_PID" 60 || {
	log "PostgreSQL did not start"
	cat "$RUN/pg/log" >&2
	exit 1
}
for ((i = 0; i < 100; i++)); do
	psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c 'CREATE DATABASE waxwing' 2>/dev/null && break
	sleep 0.1
done
DB="postgres://postgres@127.0.0.1:$PG_PORT/waxwing"

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$RUN" \
	>"$RUN/redis.log" 2>&1 &
REDIS_PID=$!
wait_port "$REDIS_PORT" "$REDIS_PID" 30 || {
	log "Redis did not start"
	exit 1
}

declare -A NODE_PID=()

cleanup() {
	local k
	for k in "${!NODE_PID[@]}"; do stop_pid "${NODE_PID[$k]}"; done
	[[ -n ${GEN_PIDS:-} ]] && kill $GEN_PIDS 2>/dev/null || true
	stop_pid "$REDIS_PID"
	kill -INT "$PG_PID" 2>/dev/null || true
	wait "$PG_PID" 2>/dev/null || true
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP
trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR

# ---- nodes ------------------------------------------------------------------
node_port() { echo $((BASE_PORT + $1)); }

configure_node() { # K clustered(0|1): bench/anchors/waxwing.toml + storage + cluster
	local k=$1 d=$RUN/n$1
	mkdir -p "$d"
	cp "$RUN/bench.crt" "$RUN/bench.key" "$d/"
	sed -e "s#@DIR@#$d#g; s#@PORT@#$(node_port "$k")#g" "$ROOT/bench/anchors/waxwing.toml" >"$d/waxwing.toml"
	if [[ ${WAXWING_MAM:-0} == 1 ]]; then sed -i 's/^enabled = false$/enabled = true/' "$d/waxwing.toml"; fi
	printf '\n[storage]\ndatabase = "%s"\n' "$DB" >>"$d/waxwing.toml"
	if [[ $2 == 1 ]]; then
		printf '\n[cluster]\nredis = "redis://127.0.0.1:%s"\nnode = "n%s"\n' "$REDIS_PORT" "$k" >>"$d/waxwing.toml"
	fi
	"$WAXWING" config check --config "$d/waxwing.toml" >/dev/null
}

start_nodes() { # N clustered: nodes 1..N, each freshly started
	local n=$1 k
	for ((k = 1; k <= n; k++)); do
		configure_node "$k" "$2"
		"$WAXWING" serve --config "$RUN/n$k/waxwing.toml" >>"$RUN/n$k/stdout.log" 2>>"$RUN/n$k/stderr.log" &
		NODE_PID[$k]=$!
	done
	for ((k = 1; k <= n; k++)); do
		wait_port "$(node_port "$k")" "${NODE_PID[$k]}" 60 || {
			log "node n$k did not start"
			tail -20 "$RUN/n$k/stderr.log" >&2
			exit 1
		}
	done
	if [[ $2 == 1 ]]; then wait_cluster "$n"; fi
	sleep 0.5 # let the runtimes settle before any RSS baseline
}

stop_nodes() {
	local k
	for k in "${!NODE_PID[@]}"; do stop_pid "${NODE_PID[$k]}"; done
	NODE_PID=()
}

node_pids() { # comma-separated, for --server-pid (CPU is summed over them):
	# every node, and Redis when the nodes form a cluster (its CPU is part
	# of what a cross-node message costs)
	local IFS=,
	if [[ $(grep -c '^\[cluster\]' "$RUN/n1/waxwing.toml") == 1 ]]; then
		echo "${NODE_PID[*]},$REDIS_PID"
	else
		echo "${NODE_PID[*]}"
	fi
}

cluster_status() { "$WAXWING" cluster status --json --config "$RUN/n1/waxwing.toml"; }

wait_cluster() { # N: every node alive in Redis
	local i
	for ((i = 0; i < 300; i++)); do
		if [[ $(cluster_status 2>/dev/null | python3 -c 'import json,sys; print(sum(1 for n in json.load(sys.stdin) if n["alive"]))' 2>/dev/null) == "$1" ]]; then
			return 0
		fi
		sleep 0.1
	done
	log "the cluster did not report $1 live nodes"
	exit 1
}

gen() { # label variant args… (a waxwing-bench run recorded in $RESULTS)
	local label=$1 variant=$2
	shift 2
	"$BENCH" "$@" --domain "$DOMAIN" --password "$PASSWORD" --system "$label" \
		--variant "$variant" --concurrency "$CONCURRENCY" --scram-cache "$RUN/scram.cache" \
		--out "$RESULTS" >>"$RUN/bench.log" 2>&1 || log "$label/$variant: waxwing-bench $1 failed (see $RUN/bench.log)"
	tail -n 1 "$RUN/bench.log" | cut -c1-200 >&2
}

addr() { echo "127.0.0.1:$(node_port "$1")"; }

T0=$(date +%s)

# ---- part 1: 1:1 chat on 1, 2 and 3 nodes ----------------------------------
chat_runs() { # label: same node (n1↔n1), then across nodes (n1↔n2) when there are two
	local label=$1 n=$2 v
	local chat=(--pairs "$PAIRS" --window "$WINDOW" --warmup "$WARMUP" --duration "$DURATION")
	for v in same-node cross-node; do
		[[ $v == cross-node && $n -lt 2 ]] && continue
		local peer=()
		[[ $v == cross-node ]] && peer=(--peer-addr "$(addr 2)")
		log "$label: $v, saturation"
		gen "$label" "$v" chat --addr "$(addr 1)" "${peer[@]}" --server-pid "$(node_pids)" "${chat[@]}"
		# Restart between runs, as bench/run.sh does: no run inherits another's queues.
		stop_nodes
		start_nodes "$n" "$3"
		log "$label: $v, $RATE msgs/s"
		gen "$label" "$v" chat --addr "$(addr 1)" "${peer[@]}" --server-pid "$(node_pids)" "${chat[@]}" \
			--rate "$RATE" --name chat-rate
		stop_nodes
		start_nodes "$n" "$3"
	done
}

if [[ " $PARTS " == *" chat "* ]]; then
	log "registering $((PAIRS * 2)) chat accounts"
	start_nodes 1 0
	gen setup setup register --addr "$(addr 1)" --count $((PAIRS * 2))
	stop_nodes
	# The reference: one node on the same PostgreSQL, no [cluster] at all.
	start_nodes 1 0
	chat_runs "no cluster" 1 0
	stop_nodes
	for n in $CLUSTER_SIZES; do
		start_nodes "$n" 1
		chat_runs "$n node$([[ $n == 1 ]] || echo s)" "$n" 1
		stop_nodes
	done
fi

# ---- part 2: many idle TLS sessions across nodes ---------------------------
GEN_PIDS=""
if [[ " $PARTS " == *" sessions "* ]]; then
	n=$SESSION_NODES
	log "registering $SESSIONS accounts (g1-… to g$n-…) and $((PAIRS * 2)) chat accounts"
	start_nodes "$n" 1
	for ((k = 1; k <= n; k++)); do
		# One registration generator per node, in parallel, each with its own cache.
		"$BENCH" register --addr "$(addr "$k")" --prefix "g$k-" --count "$PER_NODE" \
			--domain "$DOMAIN" --password "$PASSWORD" --concurrency "$CONCURRENCY" \
			--scram-cache "$RUN/scram-g$k.cache" >>"$RUN/register-g$k.log" 2>&1 &
		GEN_PIDS="$GEN_PIDS $!"
	done
	for p in $GEN_PIDS; do wait "$p" || log "a registration generator failed (see $RUN/register-g*.log)"; done
	GEN_PIDS=""
	gen setup setup register --addr "$(addr 1)" --prefix c --count $((PAIRS * 2))
	stop_nodes
	start_nodes "$n" 1
	declare -A RSS0=()
	for ((k = 1; k <= n; k++)); do RSS0[$k]=$(awk '/^VmRSS/ {print $2}' "/proc/${NODE_PID[$k]}/status"); done
	log "holding $SESSIONS sessions: generator K logs half of its accounts into node K, half into node K+1"
	rm -f "$RUN"/ready-*
	for ((k = 1; k <= n; k++)); do
		next=$((k % n + 1))
		"$BENCH" idle --addr "$(addr "$k")" --peer-addr "$(addr "$next")" --prefix "g$k-" \
			--count "$PER_NODE" --settle 3 --hold 3600 --ready-file "$RUN/ready-$k" \
			--domain "$DOMAIN" --password "$PASSWORD" --concurrency "$CONCURRENCY" \
			--scram-cache "$RUN/scram-g$k.cache" --system "g$k" --variant sessions \
			--server-pid "${NODE_PID[$k]}" >>"$RUN/idle-g$k.log" 2>&1 &
		GEN_PIDS="$GEN_PIDS $!"
	done
	for ((i = 0; i < 36000; i++)); do
		ready=$(find "$RUN" -maxdepth 1 -name 'ready-*' | wc -l)
		((ready == n)) && break
		for p in $GEN_PIDS; do kill -0 "$p" 2>/dev/null || {
			log "a generator ended early: $(tail -2 "$RUN"/idle-g*.log)"
			exit 1
		}; done
		sleep 0.1
	done
	sleep 3 # presence and replica traffic of the last logins settle
	status_json=$(cluster_status)
	log "all held; $SESSIONS sessions across $n nodes; now $SESSIONS_RATE msgs/s between n1 and n$((n / 2 + 1))"
	gen "$n nodes, $SESSIONS sessions" cross-node chat --addr "$(addr 1)" --peer-addr "$(addr $((n / 2 + 1)))" \
		--prefix c --pairs "$PAIRS" --window "$WINDOW" --warmup "$WARMUP" --duration "$DURATION" \
		--rate "$SESSIONS_RATE" --name chat-rate --server-pid "$(node_pids)"
	for ((k = 1; k <= n; k++)); do
		rss=$(awk '/^VmRSS/ {print $2}' "/proc/${NODE_PID[$k]}/status")
		fds=$(ls "/proc/${NODE_PID[$k]}/fd" | wc -l)
		sessions=$(python3 -c "import json,sys; print(next(x['sessions'] for x in json.loads(sys.argv[1]) if x['node']=='n$k'))" "$status_json")
		printf '{"scenario":"sessions","system":"n%s","variant":"node","sessions":%s,"rss_before_kb":%s,"rss_after_kb":%s,"open_files":%s}\n' \
			"$k" "$sessions" "${RSS0[$k]}" "$rss" "$fds" >>"$RESULTS"
	done
	for p in $GEN_PIDS; do kill -TERM "$p" 2>/dev/null || true; done
	for p in $GEN_PIDS; do wait "$p" 2>/dev/null || true; done
	GEN_PIDS=""
	stop_nodes
fi
T1=$(date +%s)

# ---- the report ------------------------------------------------------------
mkdir -p "$ROOT/bench/results"
OUT=$ROOT/bench/results/$(date +%Y-%m-%d)-cluster${RESULTS_TAG:+-$RESULTS_TAG}.md
python3 "$ROOT/bench/cluster_report.py" "$RESULTS" \
	--params "Run $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(((T1 - T0) / 60)) min. Chat: $PAIRS pairs, window $WINDOW, warmup ${WARMUP}s, window ${DURATION}s, fixed rate $RATE msgs/s; sessions: $SESSIONS over $SESSION_NODES nodes, $SESSIONS_RATE msgs/s between nodes meanwhile. STARTTLS, SCRAM-SHA-256, archiving off. One PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), one Redis $(redis-server --version | awk '{print $3}' | cut -d= -f2). $("$WAXWING" --version) ($(cd "$ROOT" && git rev-parse --short HEAD)).
Raw records: $RESULTS" >"$OUT"
cp "$RESULTS" "${OUT%.md}.jsonl"
log "wrote $OUT"
cat "$OUT"
