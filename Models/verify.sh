#!/usr/bin/env bash
# Models/verify.sh -- model-check the Redlock model (Models/redlock.pml) with spin.
#
# For every configuration: generate the verifier (spin -a with -D macros), compile
# pan with gcc, run it, and compare the outcome with the expectation:
#   expect=holds     pan must report errors: 0 from a complete exhaustive search
#   expect=violated  pan must find a counterexample, and it must be the assertion
#                    of the property under test
# Prints one `model: ...` line per configuration, then `N passed, N failed`.
# Exits non-zero if any configuration differs from its expectation.
#
# Environment: JOBS (parallel verifiers, default 2), PAN_MEMLIM_MB (per verifier, default
# 6144: the fenced epoch-guard searches need about 5 GiB), KEEP_TRAILS=<dir> (copy
# counterexample trails there), ONLY=<regex> (only the configurations whose name matches).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
model="$here/redlock.pml"
jobs=${JOBS:-2}
memlim=${PAN_MEMLIM_MB:-6144}

command -v spin >/dev/null || { apt-get update && apt-get install -y spin; }
command -v gcc >/dev/null || { apt-get update && apt-get install -y gcc; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Bounds shared by the configurations (see README "Bounds"):
full="-DTRIES=2 -DMAX_EXTENDS=1 -DREPLY_LOSS=1"      # client 0 retries once, one extend each
fence_full="-DTRIES=1 -DMAX_EXTENDS=1 -DREPLY_LOSS=1"
small="-DTRIES=1 -DMAX_EXTENDS=0 -DREPLY_LOSS=0"    # a counterexample here is one of the full model too
fast="-DNODE_FAST_TICKS=3"                          # driftTicks + fixedDriftAllowance + 1
no_data="-DRESTART_LOSES_DATA=1"
guard="-DRESTART_LOSES_DATA=1 -DRESTART_GUARD=1"
flush="-DDATA_LOSS_FLUSH=1"
epoch="-DEPOCH_GUARD=1 -DTRIES_OTHERS=2"   # a second try, so a refused vote can come back
gain="-DCLOCK_GAIN=2"                      # node clocks gain 2 ticks beyond the drift bound
retry="-DTRIES=2 -DMAX_EXTENDS=0 -DREPLY_LOSS=0"  # a refused vote can come back on the retry
extend="-DTRIES=1 -DMAX_EXTENDS=1 -DREPLY_LOSS=0" # an extend, which does not read the clock
clock_guard="-DCLOCK_GUARD=1"
grant="-DHANDOFF_QUEUE=1 -DHANDOFF_GRANT=1"   # a fair lock whose handoff messages are grants
grant_tries="-DTRIES=2 -DMAX_EXTENDS=0 -DREPLY_LOSS=0 -DCOLLAPSE"  # client 0 waits once

# name | property | expect | -D macros   (longest first, so two jobs finish together)
configs=(
  "handoff-grant-n3|mutex|holds|-DN=3 $grant $grant_tries"
  "clock-gain-guard-retry-n3|mutex|holds|-DN=3 $gain $clock_guard $retry -DCOLLAPSE"
  "clock-gain-guard-extend-n3|mutex|holds|-DN=3 $gain $clock_guard $extend -DCOLLAPSE"
  "safe-n3|mutex|holds|-DN=3 $full"
  "restart-guard-n3|mutex|holds|-DN=3 $guard $small"
  "safe-n3|fence|holds|-DN=3 $fence_full"
  "restart-guard-n3|fence|violated|-DN=3 $guard $small"
  "restart-epoch-guard-n3|mutex|holds|-DN=3 $no_data $epoch $small"
  "restart-epoch-guard-n3|fence|holds|-DN=3 $no_data $epoch $small"
  "flush-epoch-guard-n3|mutex|holds|-DN=3 $flush $epoch $small"
  "flush-epoch-guard-n3|fence|holds|-DN=3 $flush $epoch $small"
  "flush-short-epoch-guard-n3|mutex|violated|-DN=3 $flush $epoch -DepochGuardTicks=1 $small"
  "flush-restart-guard-n3|mutex|violated|-DN=3 $flush -DRESTART_GUARD=1 $small"
  "flush-no-guard-n3|mutex|violated|-DN=3 $flush $small"
  "flush-no-guard-n3|fence|violated|-DN=3 $flush $small"
  "restart-no-data-n3|mutex|violated|-DN=3 $no_data $small"
  "restart-no-data-n3|fence|violated|-DN=3 $no_data $small"
  "handoff-queue-n3|mutex|holds|-DN=3 -DHANDOFF_QUEUE=1 $full"
  "handoff-queue-n3|fence|holds|-DN=3 -DHANDOFF_QUEUE=1 $fence_full"
  "handoff-no-claim-reset-n3|mutex|violated|-DN=3 -DHANDOFF_QUEUE=1 -DHANDOFF_CLAIM_RESETS=0 $full"
  "handoff-grant-any-node-n3|mutex|violated|-DN=3 $grant -DHANDOFF_GRANT_ANY_NODE=1 $grant_tries -DCALLS_OTHERS=2"
  "handoff-grant-late-start-n3|mutex|violated|-DN=3 $grant -DHANDOFF_GRANT_LATE_START=1 $grant_tries -DCALLS_OTHERS=2"
  "fast-clock-n3|mutex|violated|-DN=3 $fast $full"
  "fast-clock-n3|fence|violated|-DN=3 $fast $fence_full"
  "no-drift-allowance-n3|mutex|violated|-DN=3 -DVALIDITY_ALLOWANCE=0 $full"
  "fast-clock-n5|mutex|violated|-DN=5 $fast $small"
  "fast-clock-n5|fence|violated|-DN=5 $fast $small"
  "clock-gain-guard-n3|fence|holds|-DN=3 $gain $clock_guard $small"
  "clock-gain-guard-n3|mutex|holds|-DN=3 $gain $clock_guard $small"
  "clock-gain-no-guard-n3|mutex|violated|-DN=3 $gain $small"
  "clock-gain-no-guard-n3|fence|violated|-DN=3 $gain $small"
  "clock-gain-guard-new-client-n3|mutex|violated|-DN=3 $gain $clock_guard -DCLOCK_HISTORY=0 $small"
  "clock-gain-short-guard-n3|mutex|violated|-DN=3 $gain $clock_guard -DclockHoldOffTicks=1 $retry"
)

# run_one <index> <name> <property> <expect> <macros>: writes $work/<index>.line
run_one() {
  local idx=$1 name=$2 prop=$3 expect=$4 macros=$5
  local dir="$work/$idx" check result states depth secs errors out
  mkdir -p "$dir"
  cp "$model" "$dir/redlock.pml"
  case $prop in
    mutex) check=-DCHECK_MUTEX ;;
    fence) check=-DCHECK_FENCE ;;
  esac
  (
    cd "$dir"
    # shellcheck disable=SC2086  # macros are a word list on purpose
    spin -a $check $macros redlock.pml >spin.out 2>&1
    # -DCOLLAPSE among the macros also compresses pan's state store (lossless: still exhaustive)
    collapse=""
    [[ " $macros " == *" -DCOLLAPSE "* ]] && collapse=-DCOLLAPSE
    gcc -O2 -w -DSAFETY -DMEMLIM="$memlim" ${collapse:+"$collapse"} -o pan pan.c >gcc.out 2>&1
    ./pan -m20000 -w25 >pan.out 2>&1 || true
  ) || { echo "model: $name property=$prop expect=$expect result=build-error states=0 depth=0 time=0" >"$work/$idx.line"; echo fail >"$work/$idx.status"; return 0; }

  out="$dir/pan.out"
  errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$out" | tail -n 1)
  states=$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' "$out" | tail -n 1)
  depth=$(sed -n 's/.*depth reached \([0-9]*\).*/\1/p' "$out" | tail -n 1)
  secs=$(sed -n 's/^pan: elapsed time \([0-9.e+]*\) seconds.*/\1/p' "$out" | tail -n 1)
  : "${errors:=?}" "${states:=?}" "${depth:=?}" "${secs:=?}"

  if [[ $errors == 0 ]]; then
    # errors: 0 means "holds" only if the search covered every reachable state
    if grep -q -E 'Search not completed|reached -DMEMLIM bound|out of memory|max search depth too small' "$out"; then
      result=incomplete
    else
      result=holds
    fi
  elif [[ $errors =~ ^[0-9]+$ ]] && ((errors > 0)); then
    # the counterexample must break the property under test, nothing else
    if { [[ $prop == mutex ]] && grep -q 'assertion violated.*holds' "$out"; } ||
       { [[ $prop == fence ]] && grep -q 'assertion violated.*maxToken' "$out"; }; then
      result=violated
      if [[ -n ${KEEP_TRAILS:-} ]]; then
        mkdir -p "$KEEP_TRAILS"
        (cd "$dir" && spin -t $check $macros redlock.pml 2>&1 | grep -E 'MSC:|assertion' |
          sed 's/^ *MSC: //') >"$KEEP_TRAILS/$name-$prop.txt" || true
      fi
    else
      result=other-error
    fi
  else
    result=unknown
  fi

  echo "model: $name property=$prop expect=$expect result=$result states=$states depth=$depth time=$secs" >"$work/$idx.line"
  if [[ $result == "$expect" ]]; then echo pass >"$work/$idx.status"; else echo fail >"$work/$idx.status"; fi
  rm -f "$dir/pan" "$dir"/pan.* "$dir"/*.trail
}

start=$(date +%s)
running=0
for i in "${!configs[@]}"; do
  IFS='|' read -r name prop expect macros <<<"${configs[$i]}"
  if [[ -n ${ONLY:-} && ! $name =~ $ONLY ]]; then continue; fi
  run_one "$i" "$name" "$prop" "$expect" "$macros" &
  running=$((running + 1))
  if ((running >= jobs)); then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true

passed=0
failed=0
for i in "${!configs[@]}"; do
  IFS='|' read -r name _ <<<"${configs[$i]}"
  if [[ -n ${ONLY:-} && ! $name =~ $ONLY ]]; then continue; fi
  cat "$work/$i.line"
  if [[ $(cat "$work/$i.status" 2>/dev/null) == pass ]]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
  fi
done
echo "total time: $(($(date +%s) - start)) s"
echo "$passed passed, $failed failed"
((failed == 0))
