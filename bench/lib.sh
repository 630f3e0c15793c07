# Shell functions shared by bench/run.sh and bench/cluster.sh (sourced).

# bench_certificate DIR DOMAIN: one self-signed ECDSA P-256 certificate for
# DOMAIN and conference.DOMAIN, DIR/bench.crt and DIR/bench.key.
bench_certificate() {
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-keyout "$1/bench.key" -out "$1/bench.crt" -days 7 -subj "/CN=$2" \
		-addext "subjectAltName=DNS:$2,DNS:conference.$2" 2>/dev/null
}

# wait_port PORT PID SECONDS: until 127.0.0.1:PORT accepts a connection;
# fails when PID (if given) exits first or the time is up.
wait_port() {
	local i
	for ((i = 0; i < $3 * 10; i++)); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		if [[ -n $2 ]] && ! kill -0 "$2" 2>/dev/null; then return 1; fi
		sleep 0.1
	done
	return 1
}
