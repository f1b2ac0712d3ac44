#!/usr/bin/env bash
# The README's test command (`python -m pytest -q`) timed from fresh clones of this
# commit and of BASE, on this machine, in alternating rounds: wall seconds per round,
# their medians and the ratio. Each clone gets its own venv installed as .ci/run does and
# a cold JAX compilation cache (pytest's own cache off), as a newcomer's first run has.
#
#   bash tools/suite_time.sh BASE [ROUNDS]      (ROUNDS defaults to 1)
#
# PYTEST_ARGS adds arguments to both commands (e.g. one test file, to try the script).
# Keep the machine otherwise idle while it runs (pause long runs): the two suites share
# its cores with nothing else only then. Writes only under a temporary directory, which it
# removes; prints a Markdown table.
set -euo pipefail

base=${1:?usage: bash tools/suite_time.sh BASE_COMMIT [ROUNDS]}
rounds=${2:-1}
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
work=$(mktemp -d -t jresnet-suite-time-XXXXXX)
trap 'rm -rf "$work"' EXIT

declare -A commit
for side in head base; do
  git clone -q "$repo" "$work/$side"
  [[ $side == base ]] && git -C "$work/$side" checkout -q "$base"
  commit[$side]=$(git -C "$work/$side" rev-parse --short HEAD)
  (
    cd "$work/$side"
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
  ) >"$work/$side.install.log" 2>&1 || { cat "$work/$side.install.log"; exit 1; }
done

declare -A times counts
for ((round = 1; round <= rounds; round++)); do
  for side in base head; do
    start=$(date +%s)
    # shellcheck disable=SC2086  # PYTEST_ARGS: more arguments, e.g. one file to try it
    (cd "$work/$side" && .venv/bin/python -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-}) \
      >"$work/$side.$round.log" 2>&1 || { tail -30 "$work/$side.$round.log"; exit 1; }
    times[$side]+="$(($(date +%s) - start)) "
    counts[$side]=$(grep -oE '[0-9]+ passed' "$work/$side.$round.log" | tail -1)
    echo "round $round: ${commit[$side]} ${counts[$side]}, $(echo "${times[$side]}" | awk '{print $NF}') s" >&2
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
declare -A medians
echo "| commit | tests | median wall (s) | rounds (s) |"
echo "|---|---:|---:|---|"
for side in base head; do
  medians[$side]=$(echo "${times[$side]}" | median)
  echo "| ${commit[$side]} | ${counts[$side]% passed} | $(printf %.0f "${medians[$side]}") | $(echo "${times[$side]}" | xargs) |"
done
echo
echo "ratio ${commit[head]} / ${commit[base]}: $(awk "BEGIN {printf \"%.2f\", ${medians[head]} / ${medians[base]}}")x;" \
  "$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, Python $(python3 -V | cut -d' ' -f2), $(date -u +%F)"
