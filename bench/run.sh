#!/usr/bin/env bash
# Side-by-side benchmark: Waxwing, Prosody, ejabberd and the hardware floor,
# same scenarios, same parameters, one run. See bench/README.md.
#
#   bench/run.sh            full run (10,000 idle sessions, 10 s windows…)
#   bench/run.sh --quick    smoke test: small sizes, a few minutes
#
# Writes bench/results/<date>.md (or <date>-quick.md; RESULTS_TAG=x adds -x).
# Only 127.0.0.1 is used.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
QUICK=0
for arg in "$@"; do
	case $arg in
	--quick) QUICK=1 ;;
	-h | --help)
		sed -n '2,8p' "$0"
		exit 0
		;;
	*)
		echo "unknown argument: $arg" >&2
		exit 2
		;;
	esac
done

# ---- parameters (override with the environment) ---------------------------
# IDLE_SETTLE=s: seconds the idle scenario waits after the last login before
# reading RSS (default 3): beyond the account cache's cache_secs (60) plus its
# sweep period, it measures a server whose sessions have been idle a while.
if [[ $QUICK == 1 ]]; then
	: "${LOGIN_N:=300}" "${IDLE_N:=500}" "${CHURN_N:=500}"
	# One clique of 101: every user has the 100 contacts issue 21 asks for.
	: "${ROSTER_N:=101}" "${ROSTER_CONTACTS:=100}"
	: "${PAIRS:=20}" "${RATE:=5000}" "${WARMUP:=1}" "${DURATION:=3}"
	: "${MUC_OCCUPANTS:=20}" "${MUC_SENDERS:=4}" "${MUC_SIZES:=}"
	: "${VARIANTS:=shared pinned}"
	# Pinned runs in quick mode: only the scenarios the targets are about.
	: "${PINNED_SCENARIOS:=login login-again chat chat-rate}"
else
	: "${LOGIN_N:=2000}" "${IDLE_N:=10000}" "${CHURN_N:=10000}"
	: "${ROSTER_N:=202}" "${ROSTER_CONTACTS:=100}"
	: "${PAIRS:=50}" "${RATE:=5000}" "${WARMUP:=2}" "${DURATION:=10}"
	: "${MUC_OCCUPANTS:=100}" "${MUC_SENDERS:=10}" "${MUC_SIZES:=10 1000}"
	: "${VARIANTS:=shared pinned}"
	: "${PINNED_SCENARIOS:=login login-again idle idle-plain roster-login chat chat-rate churn muc}"
fi
: "${SYSTEMS:=waxwing prosody ejabberd floor}"
: "${SCENARIOS:=login login-again idle idle-plain roster-login chat chat-rate churn muc$(for k in $MUC_SIZES; do printf ' muc-%s' "$k"; done)}"
: "${CONCURRENCY:=100}"
# Building rosters takes 20,000 subscription handshakes per 202 users; a
# server that cannot finish in time gets roster-login marked incomplete.
# (With 1,010 users neither anchor finished in 20 minutes: Prosody approved
# none, ejabberd 6 % — so the full run uses two cliques of 101.)
: "${ROSTER_TIMEOUT:=$([[ $QUICK == 1 ]] && echo 300 || echo 600)}"
: "${ROSTER_LOGIN_TIMEOUT:=$([[ $QUICK == 1 ]] && echo 60 || echo 120)}"
: "${WINDOW:=32}"
: "${PASSWORD:=benchpass1}"
: "${CARGO_TARGET_DIR:=$ROOT/target}"
export CARGO_TARGET_DIR

PORT_prosody=15222
PORT_ejabberd=25222
PORT_floor=35222
PORT_waxwing=45222
DOMAIN=bench.localhost

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---- prerequisites ---------------------------------------------------------
need_pkgs=()
command -v prosody >/dev/null || need_pkgs+=(prosody)
command -v ejabberdctl >/dev/null || [[ -x /usr/sbin/ejabberdctl ]] || need_pkgs+=(ejabberd)
command -v taskset >/dev/null || need_pkgs+=(util-linux)
command -v openssl >/dev/null || need_pkgs+=(openssl)
if ((${#need_pkgs[@]})); then
	log "installing ${need_pkgs[*]}"
	apt-get update -qq
	# The packages start their system services; we run our own instances.
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
EJABBERDCTL=$(command -v ejabberdctl || echo /usr/sbin/ejabberdctl)

WAXWING=$CARGO_TARGET_DIR/release/waxwing
BENCH=$CARGO_TARGET_DIR/release/waxwing-bench
BUILD_NOTE=""
if [[ ${NO_BUILD:-0} == 1 ]]; then
	BUILD_NOTE=" (NO_BUILD=1: binaries as found in $CARGO_TARGET_DIR)"
else
	log "building waxwing-bench and waxwing (release)"
	(cd "$ROOT" && cargo build --release -q -p waxwing-bench)
	if ! (cd "$ROOT" && cargo build --release -q -p waxwing); then
		[[ -x $WAXWING ]] || exit 1
		# A work tree in the middle of an edit should not cost a whole run.
		log "WARNING: waxwing does not build; using the earlier binary $WAXWING"
		BUILD_NOTE=" (WARNING: the work tree did not build; an earlier waxwing binary from $(date -r "$WAXWING" +%H:%M) was measured)"
	fi
fi

# Both anchors need far more than 1,024 open files; this machine's hard
# limit may be lower than 65,536, so take what there is.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NCPU=$(nproc)

RUN=$(mktemp -d /tmp/waxwing-bench.XXXXXX)
chmod 755 "$RUN"
RESULTS=$RUN/results.jsonl
: >"$RESULTS"
log "run directory $RUN"

# One ECDSA P-256 certificate for every system.
bench_certificate "$RUN" "$DOMAIN"
cat "$RUN/bench.crt" "$RUN/bench.key" >"$RUN/bench.pem"
chmod 644 "$RUN/bench.key" "$RUN/bench.pem"

SERVER_PID=""
SERVER_SYSTEM=""

# ---- per-system start/stop ---------------------------------------------------
prepare() { # system: per-run directory and config
	local s=$1 d=$RUN/$1
	mkdir -p "$d"
	cp "$RUN/bench.crt" "$RUN/bench.key" "$RUN/bench.pem" "$d/"
	case $s in
	waxwing)
		sed -e "s#@DIR@#$d#g; s#@PORT@#$PORT_waxwing#g" "$ROOT/bench/anchors/waxwing.toml" >"$d/waxwing.toml"
		if [ "${WAXWING_MAM:-0}" = 1 ]; then sed -i 's/^enabled = false$/enabled = true/' "$d/waxwing.toml"; fi
		"$WAXWING" config check --config "$d/waxwing.toml" >/dev/null
		;;
	prosody)
		mkdir -p "$d/data"
		sed -e "s#@DIR@#$d#g" "$ROOT/bench/anchors/prosody.cfg.lua" >"$d/prosody.cfg.lua"
		;;
	ejabberd)
		mkdir -p "$d/db" "$d/logs" "$d/modules.d"
		sed -e "s#@DIR@#$d#g" "$ROOT/bench/anchors/ejabberd.yml" >"$d/ejabberd.yml"
		sed -e "s#@DIR@#$d#g" "$ROOT/bench/anchors/ejabberdctl.cfg" >"$d/ejabberdctl.cfg"
		chown -R ejabberd:ejabberd "$d"
		;;
	floor) ;;
	esac
}

start() { # system variant
	local s=$1 variant=$2 d=$RUN/$1 pin=() port_var=PORT_$1 i
	[[ $variant == pinned ]] && pin=(taskset -c 0)
	# The previous instance may take a moment to release its port.
	for ((i = 0; i < 100; i++)); do
		(exec 3<>"/dev/tcp/127.0.0.1/${!port_var}") 2>/dev/null || break
		sleep 0.1
	done
	if ((i == 100)); then
		log "port ${!port_var} is held by another process: $(ss -ltnp "sport = :${!port_var}" | tail -n +2)"
		return 1
	fi
	case $s in
	waxwing)
		"${pin[@]}" "$WAXWING" serve --config "$d/waxwing.toml" >>"$d/stdout.log" 2>>"$d/stderr.log" &
		SERVER_PID=$!
		;;
	prosody)
		rm -f "$d/prosody.pid"
		"${pin[@]}" prosody -F --config "$d/prosody.cfg.lua" >>"$d/stdout.log" 2>&1 &
		SERVER_PID=$!
		;;
	ejabberd)
		rm -f "$d/ejabberd.pid"
		# As the ejabberd user, not through su (PAM would cap open files at 1,024).
		"${pin[@]}" setpriv --reuid=ejabberd --regid=ejabberd --init-groups \
			env HOME=/var/lib/ejabberd "$EJABBERDCTL" --config "$d/ejabberd.yml" \
			--ctl-config "$d/ejabberdctl.cfg" --logs "$d/logs" --spool "$d/db" start \
			>>"$d/stdout.log" 2>&1
		local i
		for ((i = 0; i < 300; i++)); do
			[[ -s $d/ejabberd.pid ]] && break
			sleep 0.1
		done
		SERVER_PID=$(cat "$d/ejabberd.pid" 2>/dev/null || true)
		;;
	floor)
		"${pin[@]}" "$BENCH" floor-server --port "$PORT_floor" --domain "$DOMAIN" \
			--cert "$d/bench.crt" --key "$d/bench.key" >>"$d/stdout.log" 2>&1 &
		SERVER_PID=$!
		;;
	esac
	if [[ -z $SERVER_PID ]] || ! wait_port "${!port_var}" "$SERVER_PID" 60; then
		log "$s did not start; see $d"
		tail -20 "$d"/*.log "$d"/logs/*.log 2>/dev/null >&2 || true
		return 1
	fi
	SERVER_SYSTEM=$s
	sleep 0.5 # let the runtime settle before the RSS baseline
}

stop() {
	[[ -z $SERVER_PID ]] && return 0
	kill -TERM "$SERVER_PID" 2>/dev/null || true
	local i
	for ((i = 0; i < 300; i++)); do
		kill -0 "$SERVER_PID" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$SERVER_PID" 2>/dev/null || true
	wait "$SERVER_PID" 2>/dev/null || true
	SERVER_PID=""
	SERVER_SYSTEM=""
}

cleanup() {
	stop
	# epmd was started by ejabberd for this run; ask it to exit.
	command -v epmd >/dev/null && epmd -kill >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP
# A run that ends early should say where (set -e exits silently).
trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR

bench() { # system variant args…
	local s=$1 variant=$2 pin=()
	shift 2
	[[ $variant == pinned ]] && pin=(taskset -c 1)
	local port_var=PORT_$s
	"${pin[@]}" "$BENCH" "$@" --addr "127.0.0.1:${!port_var}" --domain "$DOMAIN" \
		--password "$PASSWORD" --server-pid "$SERVER_PID" --system "$s" --variant "$variant" \
		--concurrency "$CONCURRENCY" --scram-cache "$RUN/$s/scram.cache" --out "$RESULTS" \
		>>"$RUN/$s/bench.log" 2>&1 || log "$s/$variant: waxwing-bench $1 failed (see $RUN/$s/bench.log)"
	tail -n 1 "$RUN/$s/bench.log" | cut -c1-200 >&2
}

max() { printf '%s\n' "$@" | sort -n | tail -1; }
# muc-<K> scenarios (the other room sizes of MUC_SIZES) need K accounts.
MUC_MAX=$MUC_OCCUPANTS
for sc in $SCENARIOS; do
	if [[ $sc == muc-[0-9]* ]]; then MUC_MAX=$(max "$MUC_MAX" "${sc#muc-}"); fi
done
USERS=$(max "$LOGIN_N" "$IDLE_N" "$CHURN_N" $((PAIRS * 2)) "$MUC_MAX")
CHAT=(--pairs "$PAIRS" --window "$WINDOW" --warmup "$WARMUP" --duration "$DURATION")

scenario() { # system variant scenario
	local s=$1 v=$2 sc=$3
	case $sc in
	login) bench "$s" "$v" login --count "$LOGIN_N" ;;
	# The same logins, each account's second since the restart: one untimed
	# round first, so every system's caches of recent accounts are warm.
	login-again) bench "$s" "$v" login --count "$LOGIN_N" --again ;;
	idle) bench "$s" "$v" idle --count "$IDLE_N" ${IDLE_SETTLE:+--settle "$IDLE_SETTLE"} ;;
	idle-plain) bench "$s" "$v" idle --count "$IDLE_N" --no-tls ;;
	roster-login)
		if [[ $s == floor ]]; then
			log "floor/$v: roster-login not measured (the floor has no rosters)"
			return
		fi
		bench "$s" "$v" roster-login --prefix r --count "$ROSTER_N" --contacts "$ROSTER_CONTACTS" \
			--timeout "$ROSTER_LOGIN_TIMEOUT"
		;;
	chat) bench "$s" "$v" chat "${CHAT[@]}" ;;
	chat-rate) bench "$s" "$v" chat "${CHAT[@]}" --rate "$RATE" --name chat-rate ;;
	churn) bench "$s" "$v" churn --count "$CHURN_N" "${CHAT[@]}" ;;
	muc) bench "$s" "$v" muc --occupants "$MUC_OCCUPANTS" --senders "$MUC_SENDERS" "${CHAT[@]}" ;;
	muc-[0-9]*)
		# Another room size, same senders: is the cost per delivery flat?
		bench "$s" "$v" muc --occupants "${sc#muc-}" --senders "$MUC_SENDERS" "${CHAT[@]}" --name "$sc"
		;;
	*) log "unknown scenario $sc" ;;
	esac
}

# ---- the run ---------------------------------------------------------------
T0=$(date +%s)
for s in $SYSTEMS; do
	prepare "$s"
	log "$s: creating $USERS accounts and $ROSTER_N roster users"
	start "$s" shared || continue
	bench "$s" setup register --count "$USERS"
	if [[ $s != floor && " $SCENARIOS " == *" roster-login "* ]]; then
		bench "$s" setup register --prefix r --count "$ROSTER_N"
		bench "$s" setup roster-setup --prefix r --count "$ROSTER_N" --contacts "$ROSTER_CONTACTS" \
			--timeout "$ROSTER_TIMEOUT"
	fi
	stop
	for v in $VARIANTS; do
		for sc in $SCENARIOS; do
			if [[ $v == pinned && " $PINNED_SCENARIOS " != *" $sc "* ]]; then continue; fi
			if [[ $v == pinned && $NCPU -lt 2 ]]; then continue; fi
			log "$s/$v: $sc"
			start "$s" "$v" || continue
			scenario "$s" "$v" "$sc"
			stop
		done
	done
done
T1=$(date +%s)

# ---- the report ------------------------------------------------------------
mkdir -p "$ROOT/bench/results"
# (Not `$([[ $QUICK == 1 ]] && echo -quick)`: in a full run that test fails,
# the assignment takes its status and set -e ended the run right here.)
SUFFIX=""
if [[ $QUICK == 1 ]]; then SUFFIX=-quick; fi
OUT=$ROOT/bench/results/$(date +%Y-%m-%d)$SUFFIX${RESULTS_TAG:+-$RESULTS_TAG}.md
PARAMS="Run $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(((T1 - T0) / 60)) min. Mode: $([[ $QUICK == 1 ]] && echo quick || echo full).
Parameters: login $LOGIN_N, idle $IDLE_N, churn $CHURN_N, roster $ROSTER_N users × $ROSTER_CONTACTS contacts, chat $PAIRS pairs (window $WINDOW, warmup ${WARMUP}s, window ${DURATION}s, fixed rate $RATE msgs/s), MUC $MUC_OCCUPANTS occupants / $MUC_SENDERS senders, login concurrency $CONCURRENCY.
Variants: shared = server and generator float over all CPUs; pinned = server on CPU 0, generator on CPU 1 (taskset). Each server is restarted before each scenario, so a \`login\` is each account's first since the start (cold); \`login-again\` logs every account in once untimed and measures the second round (returning users). STARTTLS with ECDSA P-256 unless marked plain; best SASL mechanism offered (Waxwing SCRAM-SHA-256, Prosody and ejabberd SCRAM-SHA-1, floor PLAIN).
Versions: $("$WAXWING" --version 2>/dev/null || echo waxwing) ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo ', with uncommitted changes'))$BUILD_NOTE, Prosody $(dpkg-query -W -f='${Version}' prosody 2>/dev/null), ejabberd $(dpkg-query -W -f='${Version}' ejabberd 2>/dev/null).
Raw records: $RESULTS"
"$BENCH" report "$RESULTS" --title "Waxwing benchmark $(date +%Y-%m-%d)" --params "$PARAMS" >"$OUT"
cp "$RESULTS" "${OUT%.md}.jsonl"
log "wrote $OUT"
cat "$OUT"
