#!/usr/bin/env bash
# A real two-node Ray cluster on 127.0.0.1 for tests/test_ray_cluster.py. Run it ONLY inside fresh network and PID
# namespaces (`unshare --net --pid --fork --mount-proc --kill-child bash tests/ray_cluster.sh`): the cluster then
# binds the namespace's loopback, reaches no outside host, and every process it starts dies with the namespace.
# In: REPO, W (work folder, short path), SLIDES (with a corrupt slide), GOOD (without), ARGS (extract arguments). Out: files in $W.
set -u
ip link set lo up
cd "$REPO"
export RAY_USAGE_STATS_ENABLED=0
# no token auth: the cluster is reachable from inside this private namespace only (and a token left in
# ~/.ray by another local cluster would otherwise be half-applied)
export RAY_AUTH_MODE=disabled
# notice a dead node within a few seconds, not the default half minute
export RAY_health_check_initial_delay_ms=1000 RAY_health_check_period_ms=1000 RAY_health_check_timeout_ms=1000
export RAY_health_check_failure_threshold=3
HEAD=127.0.0.1:6380
stop() { timeout 60 ray stop --force >"$W/stop.log" 2>&1; echo "stopped" >"$W/stopped"; }
trap stop EXIT

common=(--num-cpus 1 --object-store-memory 100000000 --disable-usage-stats)
timeout 120 ray start --head --node-ip-address 127.0.0.1 --port 6380 --include-dashboard=false \
  --temp-dir "$W/t" "${common[@]}" >"$W/head.log" 2>&1 || { echo "head failed" >"$W/error"; exit 1; }
timeout 120 ray start --address "$HEAD" --node-ip-address 127.0.0.1 --node-manager-port 6390 \
  "${common[@]}" >"$W/worker.log" 2>&1 || { echo "worker failed" >"$W/error"; exit 1; }

# 1. six slides and a corrupt one through the cluster (compared with the local path by the test)
# shellcheck disable=SC2086
timeout 240 python -m core extract --slides "$SLIDES" --out "$W/ray" --ray "$HEAD" $ARGS >"$W/equal.log" 2>&1
echo $? >"$W/equal.rc"

# 2. the worker node's raylet is killed while extraction runs (one patch per batch: many batches in flight)
# shellcheck disable=SC2086
timeout 240 python -m core extract --slides "$GOOD" --out "$W/kill" --ray "$HEAD" $ARGS --batch-size 1 \
  >"$W/kill.log" 2>&1 &
run=$!
# kill once the slides are being planned and embedded on both nodes (the first slide done was too late on a loaded
# machine: the worker node sometimes had no batch left in flight)
for _ in $(seq 1 1200); do
  grep -q "^6 slides;" "$W/kill.log" 2>/dev/null && break
  kill -0 $run 2>/dev/null || break
  sleep 0.1
done
sleep 2
raylet=$(ps -eo pid=,args= | awk '/raylet\/raylet / && /node_manager_port=6390/ {print $1}')
if kill -0 $run 2>/dev/null && [ -n "$raylet" ]; then
  kill -9 "$raylet" && echo "$raylet" >"$W/killed"
fi
wait $run
echo $? >"$W/kill.rc"
ps -eo pid=,args= >"$W/ps_before_stop.txt"
