#!/usr/bin/env bash
# bench/run.sh — portcullis against a direct upstream and nginx, in interleaved rounds.
#
#   bench/run.sh                       # 3 rounds x 10 s per measurement (~7 min)
#   ROUNDS=5 DURATION=20 bench/run.sh
#   SMOKE=1 bench/run.sh               # ~7 s: every measurement once, 0.25 s each
#   PROFILE=callgrind bench/run.sh     # profile the enforcing path instead (or PROFILE=perf)
#
# Prints a markdown table on stdout (progress on stderr) and writes every measurement to
# a CSV under bench/results/ (OUT_DIR). See bench/README.md for what each row means.
#
# Knobs (environment): ROUNDS DURATION CONNS WARMUP SMOKE OUT_DIR LG_CPU SRV_CPU
#   LG_SATURATION (0.95) MEMORY (1) OHA (auto) FIXED_RATE (5000) AUDIT_ROTATE_BYTES
#   PORTCULLIS_BIN UPSTREAM_BIN CARGO_TARGET_DIR KEEP_WORK
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMOKE=${SMOKE:-0}
if [[ $SMOKE == 1 ]]; then
  ROUNDS=${ROUNDS:-1}
  DURATION=${DURATION:-1}
  WARMUP=${WARMUP:-0}
  # wrk's shortest -d is 1 s: smoke measurements are cut short with SIGINT instead
  # (wrk then reports what it did in the time it actually ran).
  SMOKE_SECS=${SMOKE_SECS:-0.25}
  MEMORY=${MEMORY:-0}
  OHA=${OHA:-0}
else
  ROUNDS=${ROUNDS:-3}
  DURATION=${DURATION:-10}
  WARMUP=${WARMUP:-1}
  SMOKE_SECS=""
  MEMORY=${MEMORY:-1}
  OHA=${OHA:-auto}
fi
CONNS=${CONNS:-32}
# CPUs this process may use (cgroups/affinity), e.g. "0-1" or "2,5-7" → "0 1" / "2 5 6 7".
ALLOWED=$(awk '/^Cpus_allowed_list:/{n=split($2,p,",");for(i=1;i<=n;i++){split(p[i],r,"-");
  if(r[2]=="")r[2]=r[1];for(c=r[1];c<=r[2];c++)printf "%d ",c}}' /proc/self/status)
read -ra ALLOWED_CPUS <<<"$ALLOWED"
SRV_CPU=${SRV_CPU:-${ALLOWED_CPUS[0]:-0}}
LG_CPU=${LG_CPU:-${ALLOWED_CPUS[1]:-$SRV_CPU}}
LG_SATURATION=${LG_SATURATION:-0.95}
OUT_DIR=${OUT_DIR:-$ROOT/bench/results}
PROFILE=${PROFILE:-}
FIXED_RATE=${FIXED_RATE:-5000}

log() { printf 'bench: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---------------------------------------------------------------------------------------
# Tools and binaries
# ---------------------------------------------------------------------------------------
for t in nginx wrk taskset curl sha256sum pgrep; do
  command -v "$t" >/dev/null 2>&1 || die "\`$t\` is not installed (apt-get install -y nginx wrk procps curl)"
done
HAVE_REDIS=0
command -v redis-server >/dev/null 2>&1 && HAVE_REDIS=1
if [[ $OHA == auto ]]; then
  if command -v oha >/dev/null 2>&1; then OHA=1; else OHA=0; fi
fi
NCPU=${#ALLOWED_CPUS[@]}
if [[ $LG_CPU == "$SRV_CPU" ]]; then
  log "warning: one CPU only: the load generator and the servers share CPU $SRV_CPU"
fi

if [[ -n ${PORTCULLIS_BIN:-} && -n ${UPSTREAM_BIN:-} ]]; then
  PC=$PORTCULLIS_BIN
  UP=$UPSTREAM_BIN
else
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/bench}
  log "building release binaries in $CARGO_TARGET_DIR"
  (cd "$ROOT" && cargo build --release --quiet --bin portcullis --example bench-upstream) ||
    die "cargo build failed"
  PC=${PORTCULLIS_BIN:-$CARGO_TARGET_DIR/release/portcullis}
  UP=${UPSTREAM_BIN:-$CARGO_TARGET_DIR/release/examples/bench-upstream}
fi
[[ -x $PC ]] || die "no portcullis binary at $PC"
[[ -x $UP ]] || die "no bench-upstream binary at $UP"

# The script itself (and so wrk, curl, the sampler) runs on the load generator's CPU.
taskset -cp "$LG_CPU" $$ >/dev/null
CLK_TCK=$(getconf CLK_TCK)
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench.XXXXXX")
chmod 755 "$WORK"
STARTED=()
cleanup() {
  local p
  for p in "${STARTED[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${STARTED[@]}"; do
    for _ in $(seq 1 50); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [[ ${KEEP_WORK:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits (bounded) for a line matching $2 in file $1; prints it. $3: pid that must stay alive.
wait_line() {
  local file=$1 re=$2 pid=${3:-} i line
  for i in $(seq 1 300); do
    line=$(grep -aEm1 "$re" "$file" 2>/dev/null || true)
    if [[ -n $line ]]; then
      printf '%s\n' "$line"
      return 0
    fi
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      log "process $pid exited; its output:"
      tail -n 20 "$file" >&2
      return 1
    fi
    sleep 0.1
  done
  log "timed out waiting for /$re/ in $file"
  tail -n 20 "$file" >&2
  return 1
}

free_port() { "$UP" free-port; }

# Sum of utime+stime (clock ticks) over the given pids (all their threads).
cpu_ticks() {
  local total=0 p line
  local -a f
  for p in "$@"; do
    read -r line <"/proc/$p/stat" || continue
    line=${line##*) }
    read -ra f <<<"$line"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

# `wall_us run_ns wait_ns` for a pid: on-CPU and runqueue-wait time summed over its threads.
lg_sample() {
  local p=$1 run=0 wait=0 a b c s
  for s in /proc/"$p"/task/*/schedstat; do
    read -r a b c <"$s" 2>/dev/null || continue
    run=$((run + a))
    wait=$((wait + b))
  done
  local now=${EPOCHREALTIME/./}
  echo "$now $run $wait"
}

# ---------------------------------------------------------------------------------------
# Servers: upstream, nginx, redis, portcullis
# ---------------------------------------------------------------------------------------
taskset -c "$SRV_CPU" "$UP" serve 127.0.0.1:0 >"$WORK/upstream.out" 2>&1 &
UP_PID=$!
STARTED+=("$UP_PID")
UP_ADDR=$(wait_line "$WORK/upstream.out" '^listening ' "$UP_PID" | awk '{print $2}') ||
  die "the upstream did not start"
log "upstream $UP_ADDR (pid $UP_PID)"

# nginx is only needed for the comparison, not for profiling.
if [[ -z $PROFILE ]]; then
  NGINX_PORT=$(free_port)
  mkdir -p "$WORK/nginx/logs"
  chmod 755 "$WORK/nginx"
  cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/client_body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  keepalive_requests 1000000;
  upstream bench { server $UP_ADDR; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://bench;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  taskset -c "$SRV_CPU" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/logs/error.log" \
    >"$WORK/nginx/out" 2>&1 &
  NGINX_PID=$!
  STARTED+=("$NGINX_PID")
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$NGINX_PORT/" && break
    kill -0 "$NGINX_PID" 2>/dev/null || { cat "$WORK/nginx/out" "$WORK/nginx/logs/error.log" >&2; die "nginx exited"; }
    sleep 0.1
  done
  curl -sf -o /dev/null "http://127.0.0.1:$NGINX_PORT/" || die "nginx does not answer"
  NGINX_PIDS=("$NGINX_PID" $(pgrep -P "$NGINX_PID" || true))
  log "nginx 127.0.0.1:$NGINX_PORT (pids ${NGINX_PIDS[*]})"
  # The floor under any hyper-based proxy: hyper server + pooled hyper-util client.
  taskset -c "$SRV_CPU" "$UP" forward "$UP_ADDR" 127.0.0.1:0 >"$WORK/hyper.out" 2>&1 &
  HYPER_PID=$!
  STARTED+=("$HYPER_PID")
  HYPER_ADDR=$(wait_line "$WORK/hyper.out" '^listening ' "$HYPER_PID" | awk '{print $2}') ||
    die "the bare hyper forwarder did not start"
  log "bare hyper forwarder $HYPER_ADDR (pid $HYPER_PID)"
fi

REDIS_URL=""
if [[ $HAVE_REDIS == 1 ]]; then
  REDIS_PORT=$(free_port)
  mkdir -p "$WORK/redis"
  taskset -c "$SRV_CPU" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$WORK/redis" \
    --appendonly yes --appendfsync everysec --save '' --daemonize no --logfile "$WORK/redis/log" \
    >/dev/null 2>&1 &
  REDIS_PID=$!
  STARTED+=("$REDIS_PID")
  wait_line "$WORK/redis/log" 'Ready to accept connections' "$REDIS_PID" >/dev/null || die "redis did not start"
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"
  log "redis 127.0.0.1:$REDIS_PORT (appendonly yes, appendfsync everysec)"
else
  log "redis-server not installed: the redis parking row is skipped"
fi

redis_flush() {
  local line
  exec 9<>"/dev/tcp/127.0.0.1/$REDIS_PORT"
  printf 'FLUSHALL\r\n' >&9
  read -r line <&9
  exec 9>&-
  [[ $line == +OK* ]] || die "redis FLUSHALL answered: $line"
}

OP_SECRET="pco-bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
OP_HASH=$(printf '%s' "$OP_SECRET" | sha256sum | awk '{print $1}')
export BENCH_API_KEY="upstream-key-$RANDOM"
export BENCH_REDIS_URL=${REDIS_URL:-}

# The deny row refuses one agent thousands of times a second: with the default brake
# (`refusal_burst` pauses the agent) the rows after it would measure `paused`. Signals
# stay on and count; that one only alerts.
PC_SIGNALS='signals: { refusal_burst: { action: alert } }'
# $1: store block (YAML flow mapping); $2: the signals block (default: PC_SIGNALS)
pc_config() {
  cat <<EOF
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
node: bench
store: $1
audit: { path: data/audit.jsonl, max_refusals_per_second: 100000000${AUDIT_ROTATE_BYTES:+, rotate_bytes: $AUDIT_ROTATE_BYTES} }
limits: { max_pending_per_agent: 1000000000, max_concurrent_parks_per_agent: 100000, max_body_bytes: 104857600, max_connections_per_ip: 4096 }
operators:
  - { name: bench, token_sha256: "$OP_HASH", roles: [viewer, approver, admin] }
upstreams:
  api:
    url: http://$UP_ADDR
    inject: { header: Authorization, value_env: BENCH_API_KEY }
    tenant_header: X-Tenant-Id
sensitive_paths: ["/admin/{*rest}"]
routes:
  - prefix: /api
    upstream: api
    paths: ["/api/items/{id}", "/api/items/{id}/comments"]
    tools:
      - { match: "POST /api/items/{id}/refund", name: api.refund, risk: high }
  - prefix: /admin
    upstream: api
    unknown_paths: deny
    paths: ["/admin/users", "/admin/users/{id}"]
profiles:
  passthrough: { admin: true }
  scoped:
    tools: ["api.items.get", "api.items.list", "api.items.comments.*"]
    resources: ["/api", "/api/{*rest}"]
    max_risk: medium
    approval: ["api.refund"]
    deny: ["*.delete"]
agents:
  bench-admin: { profile: passthrough, tenant: bench }
  bench-agent: { profile: scoped, tenant: bench }
${2:-$PC_SIGNALS}
EOF
}

PC_SEQ=0
PC_WRAP=()
# start_pc NAME STORE_YAML [SIGNALS_YAML]: sets PC_PID, PC_ADDR, PC_ADMIN.
start_pc() {
  PC_SEQ=$((PC_SEQ + 1))
  local dir="$WORK/$1-$PC_SEQ"
  mkdir -p "$dir/data"
  pc_config "$2" "${3:-}" >"$dir/routes.yaml"
  RUST_LOG=${PC_RUST_LOG:-warn,portcullis::server=info} NO_COLOR=1 taskset -c "$SRV_CPU" \
    "${PC_WRAP[@]}" "$PC" serve --config "$dir/routes.yaml" 2>"$dir/log" >/dev/null &
  PC_PID=$!
  PC_LOG="$dir/log"
  STARTED+=("$PC_PID")
  local line
  line=$(wait_line "$dir/log" 'listening.*proxy=' "$PC_PID") || die "portcullis ($1) did not start"
  PC_ADDR=$(sed -E 's/.*proxy=([0-9.]+:[0-9]+).*/\1/' <<<"$line")
  PC_ADMIN=$(sed -E 's/.*admin=([0-9.]+:[0-9]+).*/\1/' <<<"$line")
}

stop_pc() {
  local p=$1
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$p" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}

# issue_token ADMIN_ADDR AGENT → the agent credential
issue_token() {
  local out
  out=$(curl -sS -f -X POST "http://$1/tokens" -H "Authorization: Bearer $OP_SECRET" \
    -H 'Content-Type: application/json' -d "{\"agent\":\"$2\",\"ttl\":\"24h\"}") ||
    die "POST /tokens for $2 failed"
  sed -E 's/.*"secret":"([^"]+)".*/\1/' <<<"$out"
}

[[ $PROFILE == callgrind ]] && PC_WRAP=(valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out")
start_pc main '{ embedded: data/p.redb }'
PC_WRAP=()
MAIN_PID=$PC_PID
MAIN_LOG=$PC_LOG
MAIN_ADDR=$PC_ADDR
ADMIN_TOKEN=$(issue_token "$PC_ADMIN" bench-admin)
AGENT_TOKEN=$(issue_token "$PC_ADMIN" bench-agent)
log "portcullis $MAIN_ADDR (pid $MAIN_PID), admin $PC_ADMIN"
# The same enforcing path with signals off: what watching each agent costs.
if [[ -z $PROFILE ]]; then
  start_pc nosignals '{ embedded: data/p.redb }' 'signals: { enabled: false }'
  NOSIG_PID=$PC_PID
  NOSIG_LOG=$PC_LOG
  NOSIG_ADDR=$PC_ADDR
  NOSIG_TOKEN=$(issue_token "$PC_ADMIN" bench-agent)
  log "portcullis with signals off $NOSIG_ADDR (pid $NOSIG_PID)"
  # The same enforcing path at the shipped default log level (`info`: one line per
  # request, through the log queue, to a file as journald or a runtime would take it).
  PC_RUST_LOG=info start_pc loginfo '{ embedded: data/p.redb }'
  LOGINFO_PID=$PC_PID
  LOGINFO_LOG=$PC_LOG
  LOGINFO_ADDR=$PC_ADDR
  LOGINFO_TOKEN=$(issue_token "$PC_ADMIN" bench-agent)
  log "portcullis at the default log level $LOGINFO_ADDR (pid $LOGINFO_PID)"
fi

# ---------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------
# name | conns | target | method | path | token | body | expected status | headers
ITEM=/api/items/42
# The enforcing request as an MCP tools/call (2026-07-28, stateless): same tool, same
# upstream request, through the same gate.
MCP_CALL='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"api.items.get","arguments":{"id":"42"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}'
MCP_HEADERS="MCP-Protocol-Version: 2026-07-28|Mcp-Method: tools/call|Mcp-Name: api.items.get|Accept: application/json"
scenario() {
  case $1 in
    direct) S=("$CONNS" "$UP_ADDR" GET "$ITEM" "" "" 200) ;;
    nginx) S=("$CONNS" "127.0.0.1:$NGINX_PORT" GET "$ITEM" "" "" 200) ;;
    hyper) S=("$CONNS" "$HYPER_ADDR" GET "$ITEM" "" "" 200) ;;
    passthrough) S=("$CONNS" "$MAIN_ADDR" GET "$ITEM" "$ADMIN_TOKEN" "" 200) ;;
    enforcing) S=("$CONNS" "$MAIN_ADDR" GET "$ITEM" "$AGENT_TOKEN" "" 200) ;;
    enforcing-nosignals) S=("$CONNS" "$NOSIG_ADDR" GET "$ITEM" "$NOSIG_TOKEN" "" 200) ;;
    enforcing-loginfo) S=("$CONNS" "$LOGINFO_ADDR" GET "$ITEM" "$LOGINFO_TOKEN" "" 200) ;;
    deny) S=("$CONNS" "$MAIN_ADDR" DELETE "$ITEM" "$AGENT_TOKEN" "" 403) ;;
    mcp-call) S=("$CONNS" "$MAIN_ADDR" POST /mcp "$AGENT_TOKEN" "$MCP_CALL" 200 "$MCP_HEADERS") ;;
    park-redis | park-embedded) S=("$CONNS" "$PARK_ADDR" POST "$ITEM/refund" "$PARK_TOKEN" '{"amount":10}' 202) ;;
    direct-c1) S=(1 "$UP_ADDR" GET "$ITEM" "" "" 200) ;;
    nginx-c1) S=(1 "127.0.0.1:$NGINX_PORT" GET "$ITEM" "" "" 200) ;;
    hyper-c1) S=(1 "$HYPER_ADDR" GET "$ITEM" "" "" 200) ;;
    passthrough-c1) S=(1 "$MAIN_ADDR" GET "$ITEM" "$ADMIN_TOKEN" "" 200) ;;
    enforcing-c1) S=(1 "$MAIN_ADDR" GET "$ITEM" "$AGENT_TOKEN" "" 200) ;;
    *) die "unknown scenario $1" ;;
  esac
}
# The process whose CPU counts as "the proxy" for a scenario.
proxy_pids() {
  case $1 in
    direct*) echo "" ;;
    nginx*) echo "${NGINX_PIDS[*]}" ;;
    hyper*) echo "$HYPER_PID" ;;
    park-*) echo "$PARK_PID" ;;
    enforcing-nosignals) echo "$NOSIG_PID" ;;
    enforcing-loginfo) echo "$LOGINFO_PID" ;;
    *) echo "$MAIN_PID" ;;
  esac
}

# The log that explains a scenario's unexpected answers.
server_log() {
  case $1 in
    direct*) echo "" ;;
    nginx*) echo "$WORK/nginx/logs/error.log" ;;
    hyper*) echo "$WORK/hyper.out" ;;
    park-*) echo "$PARK_LOG" ;;
    enforcing-nosignals) echo "$NOSIG_LOG" ;;
    enforcing-loginfo) echo "$LOGINFO_LOG" ;;
    *) echo "$MAIN_LOG" ;;
  esac
}

CSV_HEADER="round,scenario,conns,requests,duration_s,rps,p50_us,p90_us,p99_us,mean_us,max_us,proxy_cpu_us_per_req,upstream_cpu_us_per_req,lg_busy,unexpected,first_bad_status,socket_errors,valid,note"
mkdir -p "$OUT_DIR"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
CSV="$OUT_DIR/bench-$STAMP$([[ $SMOKE == 1 ]] && echo -smoke || true).csv"
echo "$CSV_HEADER" >"$CSV"

# run_wrk ROUND SCENARIO SECONDS RECORD(0|1)
run_wrk() {
  local round=$1 name=$2 secs=$3 record=$4
  scenario "$name"
  local conns=${S[0]} addr=${S[1]}
  local -a ppids
  read -ra ppids <<<"$(proxy_pids "$name")"
  local out="$WORK/wrk-$round-$name.out"
  local slog lines0=0
  slog=$(server_log "$name")
  [[ -n $slog && -f $slog ]] && lines0=$(wc -l <"$slog")
  local p0=0 u0
  ((${#ppids[@]})) && p0=$(cpu_ticks "${ppids[@]}")
  u0=$(cpu_ticks "$UP_PID")
  BENCH_METHOD=${S[2]} BENCH_PATH=${S[3]} BENCH_TOKEN=${S[4]} BENCH_BODY=${S[5]} \
    BENCH_EXPECT=${S[6]} BENCH_HEADERS=${S[7]:-} \
    taskset -c "$LG_CPU" wrk -t1 -c"$conns" -d"${secs}s" --timeout 10s -s "$ROOT/bench/wrk.lua" \
    "http://$addr" >"$out" 2>&1 &
  local wpid=$! first="" last="" smp
  if [[ -n $SMOKE_SECS ]]; then
    sleep "$SMOKE_SECS"
    kill -INT "$wpid" 2>/dev/null || true
  fi
  while kill -0 "$wpid" 2>/dev/null; do
    sleep 0.25
    smp=$(lg_sample "$wpid" 2>/dev/null) || break
    [[ $smp == *" 0 0" ]] && continue
    [[ -z $first ]] && first=$smp
    last=$smp
  done
  wait "$wpid" || true
  ((record)) || return 0
  local p1=0 u1
  ((${#ppids[@]})) && p1=$(cpu_ticks "${ppids[@]}")
  u1=$(cpu_ticks "$UP_PID")
  local res
  res=$(grep -m1 '^RESULT ' "$out" || true)
  if [[ -z $res ]]; then
    log "wrk printed no result for $name:"
    cat "$out" >&2
    echo "$round,$name,$conns,0,0,0,0,0,0,0,0,,,,0,0,0,0,no wrk result" >>"$CSV"
    return 0
  fi
  local -A r=()
  local kv
  for kv in ${res#RESULT }; do r[${kv%%=*}]=${kv#*=}; done
  local busy="" note="" valid=1
  if [[ -n $first && $first != "$last" ]]; then
    busy=$(awk -v a="$first" -v b="$last" 'BEGIN{split(a,x," ");split(b,y," ");
      w=(y[1]-x[1])*1000; if (w<=0) {print ""; exit} printf "%.3f", ((y[2]-x[2])+(y[3]-x[3]))/w}')
  fi
  if ((r[unexpected] > 0)); then
    valid=0
    note+="unexpected status ${r[first_bad]} x${r[unexpected]}"
    # The proxy logs every 5xx at WARN with its reason: name them.
    if [[ -n $slog && -f $slog ]]; then
      local why
      why=$(tail -n +"$((lines0 + 1))" "$slog" | grep -o 'reason="[a-z_]*"' | sort | uniq -c |
        awk '{gsub(/reason=|"/, "", $2); printf "%s%s x%s", (NR > 1 ? " " : ""), $2, $1}' || true)
      [[ -n $why ]] && note+=" ($why)"
    fi
    note+="; "
  fi
  if ((r[socket_errors] > 0)); then
    valid=0
    note+="socket errors x${r[socket_errors]}; "
  fi
  if ((r[requests] == 0)); then
    valid=0
    note+="no responses; "
  fi
  if [[ -n $busy ]] && awk -v b="$busy" -v s="$LG_SATURATION" 'BEGIN{exit !(b>=s)}'; then
    if [[ $name == direct ]]; then
      note+="load generator saturated (reference only); "
    else
      valid=0
      note+="load generator saturated; "
    fi
  fi
  awk -v round="$round" -v name="$name" -v conns="$conns" -v req="${r[requests]}" \
    -v dur="${r[duration_us]}" -v p50="${r[p50_us]}" -v p90="${r[p90_us]}" -v p99="${r[p99_us]}" \
    -v mean="${r[mean_us]}" -v max="${r[max_us]}" -v pt=$((p1 - p0)) -v ut=$((u1 - u0)) \
    -v has_p=${#ppids[@]} -v tck="$CLK_TCK" -v busy="$busy" -v unexp="${r[unexpected]}" \
    -v fb="${r[first_bad]}" -v se="${r[socket_errors]}" -v valid="$valid" -v note="${note%; }" \
    'BEGIN{
      d=dur/1e6; rps=(d>0)?req/d:0;
      pc=(has_p && req>0)?sprintf("%.2f", pt*1e6/tck/req):"";
      uc=(req>0)?sprintf("%.2f", ut*1e6/tck/req):"";
      gsub(/,/,";",note);
      printf "%s,%s,%s,%s,%.3f,%.0f,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n",
        round,name,conns,req,d,rps,p50,p90,p99,mean,max,pc,uc,busy,unexp,fb,se,valid,note}' >>"$CSV"
  log "$(printf 'round %s %-15s %s' "$round" "$name" "$(tail -n1 "$CSV" | awk -F, '{printf "%8s req/s  p50 %5s us  p99 %6s us  proxy %6s us/req  lg %s %s", $6, $7, $9, $12, $14, $19}')")"
}

# Parking gets a fresh proxy (and store) per measurement, so rounds compare like with like.
start_park() {
  case $1 in
    park-redis)
      redis_flush
      start_pc park-redis '{ redis: { url_env: BENCH_REDIS_URL, key_prefix: "pc:" } }'
      ;;
    park-embedded) start_pc park-embedded '{ embedded: data/p.redb }' ;;
  esac
  PARK_PID=$PC_PID
  PARK_LOG=$PC_LOG
  PARK_ADDR=$PC_ADDR
  PARK_TOKEN=$(issue_token "$PC_ADMIN" bench-agent)
}

measure() {
  local round=$1 name=$2
  if [[ $name == park-* ]]; then
    if [[ $name == park-redis && $HAVE_REDIS == 0 ]]; then return 0; fi
    start_park "$name"
    ((WARMUP > 0)) && run_wrk "$round" "$name" "$WARMUP" 0
    run_wrk "$round" "$name" "$DURATION" 1
    stop_pc "$PARK_PID"
    # Parking leaves dirty pages (AOF, redb, audit) behind: let writeback finish so the
    # next measurement does not pay for it.
    if [[ -z $SMOKE_SECS ]]; then
      sync
      sleep 1
    fi
  else
    run_wrk "$round" "$name" "$DURATION" 1
  fi
}

SCENARIOS=(direct nginx hyper passthrough enforcing enforcing-nosignals enforcing-loginfo mcp-call deny park-redis park-embedded
  direct-c1 nginx-c1 hyper-c1 passthrough-c1 enforcing-c1)
# ONLY="nginx enforcing": measure a subset (while tuning; the targets table needs all).
if [[ -n ${ONLY:-} ]]; then
  read -ra SCENARIOS <<<"$ONLY"
fi

# Every path answers what it should before anything is measured.
check_status() {
  local name=$1 code
  scenario "$name"
  local -a args=(-s -o /dev/null -w '%{http_code}' -X "${S[2]}")
  [[ -n ${S[4]} ]] && args+=(-H "Authorization: Bearer ${S[4]}")
  [[ -n ${S[5]} ]] && args+=(-H 'Content-Type: application/json' --data-binary "${S[5]}")
  local -a extra=()
  [[ -n ${S[7]:-} ]] && IFS='|' read -ra extra <<<"${S[7]}"
  for h in "${extra[@]}"; do args+=(-H "$h"); done
  code=$(curl "${args[@]}" "http://${S[1]}${S[3]}")
  [[ $code == "${S[6]}" ]] || die "$name: expected ${S[6]}, got $code"
}

# PROFILE=callgrind|perf: drive one scenario (PROFILE_SCENARIO, default enforcing) and
# report where the proxy's time goes. callgrind counts instructions (exact, reproducible,
# but sha2 runs its portable code under valgrind); perf samples cpu-clock with DWARF
# call graphs. Parking scenarios: perf only (the park proxy is started fresh).
PROFILE_SCENARIO=${PROFILE_SCENARIO:-enforcing}
profile_scenario() {
  local sc=$PROFILE_SCENARIO secs=$DURATION
  local report="$OUT_DIR/profile-$PROFILE-$sc-$STAMP.txt" pid
  case $sc in
    passthrough | enforcing | deny | mcp-call) pid=$MAIN_PID ;;
    park-redis | park-embedded)
      [[ $PROFILE == perf ]] || die "PROFILE=callgrind profiles passthrough, enforcing, deny or mcp-call"
      [[ $sc == park-redis && $HAVE_REDIS == 0 ]] && die "park-redis needs redis-server"
      start_park "$sc"
      pid=$PARK_PID
      ;;
    *) die "PROFILE_SCENARIO must be passthrough, enforcing, deny, mcp-call, park-redis or park-embedded" ;;
  esac
  check_status "$sc"
  local result="$WORK/wrk-0-$sc.out"
  case $PROFILE in
    callgrind)
      run_wrk 0 "$sc" "$secs" 0
      log "stopping the proxy so callgrind writes its profile"
      stop_pc "$pid"
      callgrind_annotate --auto=no --inclusive=no "$WORK/callgrind.out" 2>/dev/null >"$WORK/self.txt"
      callgrind_annotate --auto=no --inclusive=yes "$WORK/callgrind.out" 2>/dev/null >"$WORK/incl.txt"
      local total
      total=$(awk '/PROGRAM TOTALS/{gsub(/,/,"",$1); print $1}' "$WORK/self.txt")
      {
        set +e +o pipefail # `head` may close a pipe early: a report, not a check
        echo "## callgrind: $sc, $CONNS connections, $(grep -m1 '^RESULT' "$result")"
        echo
        echo "Total: $total instructions in the proxy process (all threads; startup included)."
        echo "Note: under valgrind sha2 runs its portable code, not SHA-NI: SHA-256 costs are inflated."
        echo
        echo "### self (exclusive) instructions by function, top 30"
        awk -v mode=self -f "$ROOT/bench/callgrind.awk" "$WORK/self.txt" | sort -rn | head -n 30 | cut -f2-
        echo
        echo "### portcullis functions, inclusive instructions (largest file:function line)"
        awk -v mode=incl -v filter='^<?portcullis::' -f "$ROOT/bench/callgrind.awk" "$WORK/incl.txt" |
          sort -rn | head -n 30 | cut -f2-
      } | tee "$report"
      ;;
    perf)
      perf record -e cpu-clock -F 499 --call-graph dwarf,32768 -o "$WORK/perf.data" -p "$pid" -- sleep "$((secs + 1))" \
        >"$WORK/perf.out" 2>&1 &
      local ppid=$!
      sleep 0.5
      run_wrk 0 "$sc" "$secs" 0
      wait "$ppid" || true
      perf report -i "$WORK/perf.data" --children --sort symbol --stdio 2>/dev/null >"$WORK/children.txt"
      {
        set +e +o pipefail # `head` may close a pipe early: a report, not a check
        echo "## perf (cpu-clock): $sc, $CONNS connections, $(grep -m1 '^RESULT' "$result")"
        echo
        echo "### by thread"
        perf report -i "$WORK/perf.data" --no-children --sort comm --stdio 2>/dev/null |
          grep -E '^ +[0-9.]+%' | sed -E 's/[[:space:]-]+$//'
        echo
        echo "### self, top 30 symbols"
        perf report -i "$WORK/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
          grep -E '^ +[0-9.]+%' | sed -E 's/[[:space:]-]+$//' | head -n 30
        echo
        echo "### portcullis functions and the syscalls/locks under them, with children"
        grep -E '^ +[0-9.]+%' "$WORK/children.txt" | sed -E 's/[[:space:]-]+$//' | grep -v '(inlined)$' |
          grep -E 'portcullis::|redb::|redis::|hyper::client|fdatasync|statx|futex_wake|lock_contended|sys_openat' |
          head -n 40
      } | tee "$report"
      ;;
    *) die "PROFILE must be callgrind or perf" ;;
  esac
  log "profile: $report"
}
if [[ -n $PROFILE ]]; then
  rm -f "$CSV"
  [[ $PROFILE == callgrind ]] && CONNS=${PROFILE_CONNS:-4}
  [[ $PROFILE == perf && -n ${PROFILE_CONNS:-} ]] && CONNS=$PROFILE_CONNS
  profile_scenario
  exit 0
fi

for s in direct nginx hyper passthrough enforcing enforcing-nosignals enforcing-loginfo deny; do check_status "$s"; done

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before: $LOAD_BEFORE; $ROUNDS round(s) x ${#SCENARIOS[@]} measurements x ${DURATION}s, $CONNS connections"
if ((WARMUP > 0)); then
  for s in direct nginx passthrough enforcing enforcing-nosignals enforcing-loginfo deny; do run_wrk 0 "$s" "$WARMUP" 0; done
fi

n=${#SCENARIOS[@]}
for ((round = 1; round <= ROUNDS; round++)); do
  # Rotate the order each round so no scenario always runs first (or after parking).
  off=$(((round - 1) * 3 % n))
  for ((i = 0; i < n; i++)); do
    measure "$round" "${SCENARIOS[$(((i + off) % n))]}"
  done
done

# ---------------------------------------------------------------------------------------
# Fixed rate (oha, if installed): latency at FIXED_RATE req/s, corrected for omission.
# ---------------------------------------------------------------------------------------
oha_run() {
  local round=$1 name=$2 addr=$3 token=$4 out="$WORK/oha-$1-$2.json"
  local -a h=()
  [[ -n $token ]] && h=(-H "Authorization: Bearer $token")
  taskset -c "$LG_CPU" oha --no-tui --output-format json -z "${DURATION}s" -q "$FIXED_RATE" \
    --latency-correction -c "$CONNS" "${h[@]}" "http://$addr$ITEM" >"$out" 2>"$out.err" || true
  awk -v round="$round" -v name="$name" -v conns="$CONNS" -v rate="$FIXED_RATE" '
    { t = t $0 }
    END {
      # seconds → µs; statusCodeDistribution must hold only "200"
      p50 = t; sub(/.*"latencyPercentiles"[^}]*"p50": */, "", p50); sub(/[,}].*/, "", p50)
      p99 = t; sub(/.*"latencyPercentiles"[^}]*"p99": */, "", p99); sub(/[,}].*/, "", p99)
      rps = t; sub(/.*"requestsPerSec": */, "", rps); sub(/[,}].*/, "", rps)
      sc = t; sub(/.*"statusCodeDistribution": *\{/, "", sc); sub(/\}.*/, "", sc)
      ok = (sc ~ /^ *"200": *[0-9]+ *$/)
      note = "oha fixed rate"
      if (!ok) note = "oha: unexpected statuses " sc
      # A server that cannot keep up turns latency into queueing time: not a latency.
      else if (rps < 0.97 * rate) { ok = 0; note = sprintf("rate not sustained (%.0f req/s)", rps) }
      gsub(/,/, ";", note)
      printf "%s,%s,%s,,,%.0f,%.0f,,%.0f,,,,,,%s,,,%s,%s\n", round, name, conns, rps,
        p50 * 1e6, p99 * 1e6, ok ? 0 : 1, ok ? 1 : 0, note
    }' "$out" >>"$CSV"
}
if [[ $OHA == 1 ]]; then
  for ((round = 1; round <= ROUNDS; round++)); do
    oha_run "$round" "direct-${FIXED_RATE}rps" "$UP_ADDR" ""
    [[ -n ${NGINX_PORT:-} ]] && oha_run "$round" "nginx-${FIXED_RATE}rps" "127.0.0.1:$NGINX_PORT" ""
    [[ -n ${HYPER_ADDR:-} ]] && oha_run "$round" "hyper-${FIXED_RATE}rps" "$HYPER_ADDR" ""
    oha_run "$round" "passthrough-${FIXED_RATE}rps" "$MAIN_ADDR" "$ADMIN_TOKEN"
    oha_run "$round" "enforcing-${FIXED_RATE}rps" "$MAIN_ADDR" "$AGENT_TOKEN"
  done
fi

# ---------------------------------------------------------------------------------------
# Memory: a fresh proxy, 1,000 idle keep-alive agent connections, then a 50 MiB body.
# ---------------------------------------------------------------------------------------
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/{print $2}' "/proc/$1/status"; }
if [[ $MEMORY == 1 ]]; then
  start_pc mem '{ embedded: data/p.redb }'
  MEM_PID=$PC_PID
  MEM_TOKEN=$(issue_token "$PC_ADMIN" bench-agent)
  MEM_ADMIN_TOKEN=$(issue_token "$PC_ADMIN" bench-admin)
  curl -sf -o /dev/null -H "Authorization: Bearer $MEM_TOKEN" "http://$PC_ADDR$ITEM" || die "mem proxy"
  idle=$(rss_kib "$MEM_PID")
  taskset -c "$LG_CPU" "$UP" hold "$PC_ADDR" 1000 30 "$ITEM" "$MEM_TOKEN" >"$WORK/hold.out" 2>&1 &
  HOLD_PID=$!
  STARTED+=("$HOLD_PID")
  if wait_line "$WORK/hold.out" '^held ' "$HOLD_PID" >/dev/null; then
    sleep 1
    held=$(rss_kib "$MEM_PID")
    echo "0,mem-1000-idle-conns,1000,,,,,,,,,,,,,,,1,rss_kib=$held idle_rss_kib=$idle" >>"$CSV"
    log "RSS idle $idle KiB; with 1000 idle agent connections $held KiB"
  fi
  kill -TERM "$HOLD_PID" 2>/dev/null || true
  wait "$HOLD_PID" 2>/dev/null || true
  # Peak RSS while a 50 MiB body streams through (VmHWM reset first).
  head -c 52428800 /dev/zero >"$WORK/body.bin"
  before=$(rss_kib "$MEM_PID")
  echo 5 >"/proc/$MEM_PID/clear_refs" 2>/dev/null || true
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -T "$WORK/body.bin" \
    -H "Authorization: Bearer $MEM_ADMIN_TOKEN" -H 'Content-Type: application/octet-stream' \
    "http://$PC_ADDR$ITEM/comments")
  peak=$(hwm_kib "$MEM_PID")
  echo "0,mem-50mib-body,1,,,,,,,,,,,,,,,$([[ $code == 200 ]] && echo 1 || echo 0),status=$code rss_before_kib=$before peak_kib=$peak" >>"$CSV"
  log "50 MiB body: status $code, RSS before $before KiB, peak $peak KiB"
  rm -f "$WORK/body.bin"
  stop_pc "$MEM_PID"
fi

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------
# Summary: medians (min–max) over the kept rounds, ratios within each round.
# ---------------------------------------------------------------------------------------
awk -F, -v rounds="$ROUNDS" -v dur="$DURATION" -v conns="$CONNS" -v smoke="$SMOKE" \
  -v load_before="$LOAD_BEFORE" -v load_after="$LOAD_AFTER" -v csv="$CSV" \
  -v nproc="$NCPU" -v rate="$FIXED_RATE" -f "$ROOT/bench/summary.awk" "$CSV"
log "csv: $CSV"
