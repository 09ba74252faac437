#!/usr/bin/env bash
# Usage: benches/scripts/unlock-memory.sh BINARY [ACCOUNTS]: a node's resident memory before and
# after unlocking ACCOUNTS accounts (default 8) through its API, and its peak. Each unlock runs
# argon2id with 19 MiB; what is left afterwards is what the allocator kept.
set -euo pipefail
bin=$1; n=${2:-8}
home=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$home"' EXIT
export DKVS_PASSPHRASE=x
for i in $(seq 1 "$n"); do "$bin" --home "$home" account new "a$i" >/dev/null; done
"$bin" --home "$home" node --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 >/dev/null 2>"$home/log" &
pid=$!
for _ in $(seq 100); do [ -f "$home/api.json" ] && break; sleep 0.1; done
if [ ! -f "$home/api.json" ]; then echo "the node did not start:" >&2; cat "$home/log" >&2; exit 1; fi
field() { python3 -c "import json; print(json.load(open('$home/api.json'))['$1'])"; }
url=$(field url); token=$(field token)
kib() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$pid/status"; }
before=$(kib VmRSS)
# A read in the account's own scope unlocks it (404: nothing is stored there).
for i in $(seq 1 "$n"); do
  code=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$url/v1/kv/~/x?account=a$i")
  [ "$code" = 404 ] || { echo "unlocking a$i: HTTP $code" >&2; exit 1; }
done
sleep 1
echo "$bin: RSS $before KiB before, $(kib VmRSS) KiB after $n unlocks, peak $(kib VmHWM) KiB"
