#!/usr/bin/env bash
# Usage: benches/scripts/idle-wakeups.sh BINARY [SECONDS]: wake-ups (context switches, all threads) and CPU of an idle node.
bin=$1; secs=${2:-10}
home=$(mktemp -d)
export DKVS_PASSPHRASE=x
printf 'listen = ["/ip4/127.0.0.1/tcp/0"]\napi = "127.0.0.1:0"\n' > $home/config.toml
$bin --home $home node >/dev/null 2>$home/log &
pid=$!
sleep 3
count() { cat /proc/$pid/task/*/status 2>/dev/null | awk '/voluntary_ctxt_switches/ {s+=$2} END {print s}'; }
cpu() { awk '{print $14+$15}' /proc/$pid/stat; }
c0=$(count); t0=$(cpu)
sleep $secs
c1=$(count); t1=$(cpu)
echo "$bin: $(( (c1-c0) )) context switches in ${secs} s ($(( (c1-c0)/secs ))/s), cpu $(( t1-t0 )) ticks"
kill $pid; wait $pid 2>/dev/null; rm -rf $home
