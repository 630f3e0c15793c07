-- Prosody 0.12 benchmark configuration (performance anchors).
-- Started by bench/run.sh, never as the system service.
-- @DIR@ is replaced with the per-run temporary directory by bench/run.sh.

run_as_root = true          -- the script runs it as root inside a throw-away dir
daemonize = false
pidfile = "@DIR@/prosody.pid"
data_path = "@DIR@/data"
network_backend = "epoll"
log = { warn = "@DIR@/prosody.log" }

interfaces = { "127.0.0.1" }
c2s_ports = { 15222 }
c2s_direct_tls_ports = { }
s2s_ports = { 15269 }       -- s2s module is disabled below; port only reserved
http_ports = { }
https_ports = { }

modules_enabled = {
	"roster"; "saslauth"; "tls"; "disco"; "ping"; "register";
}
modules_disabled = { "s2s"; "offline"; "c2s_limits" }
-- No mod_limits (rate limiting) loaded at all.

-- Registration (XEP-0077) open and unthrottled for load tests
allow_registration = true
min_seconds_between_registrations = 0
registration_throttle_max = 1000000
registration_throttle_period = 1
registration_allowlist = { "127.0.0.1", "::1" }

-- Plaintext allowed so that the no-TLS scenarios can run
c2s_require_encryption = false
allow_unencrypted_plain_auth = true

authentication = "internal_hashed"
default_iteration_count = 4096   -- same SCRAM iteration count as ejabberd's default
storage = "internal"

c2s_timeout = 600
network_settings = { tcp_backlog = 1024 }
c2s_tcp_keepalives = false

ssl = {
	certificate = "@DIR@/bench.crt";
	key = "@DIR@/bench.key";
}

VirtualHost "bench.localhost"

Component "conference.bench.localhost" "muc"
	restrict_room_creation = false
	muc_room_locking = false
	muc_room_default_history_length = 0
	max_history_messages = 0
	muc_tombstones = false
