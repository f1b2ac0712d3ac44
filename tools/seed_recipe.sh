#!/usr/bin/env bash
# The seed recipe's two long runs (README "Results") across sittings and machines.
#
#   bash tools/seed_recipe.sh start    # set up what this machine lacks, then (re)start the run
#   bash tools/seed_recipe.sh stop     # pause it, snapshot, pack its state, write the report
#   bash tools/seed_recipe.sh status   # which run, how far, running or not
#
# The runs go one after the other: jresnet's, then the seed's PyTorch loop. `start` makes,
# where missing, the data dir (python -m jresnet.prepare_data), the run's clone pinned at its
# commit (the one results/seed-recipe/NAME/run-info.json names when a packed state waits in
# results/seed-recipe/NAME/resume/, else this repository's HEAD), a venv for it, and, where
# the work directory is missing and a packed state waits, unpacks it
# (python -m benchmarks.run_state); then it starts the run's command in the background
# (nohup, output appended to RUNS/NAME.log) unless it runs already or has finished. `stop`
# sends the run SIGTERM (jresnet saves inside the epoch; both resume exactly), waits for it,
# then writes results/ and README.md's table (benchmarks.seed_recipe snapshot and report)
# and packs the state: commit results/ and README.md after it. Run it from the repository
# root. RUNS (default ~/runs) holds everything, VENV (default RUNS/venv) is the runs' venv,
# CIFAR10_JPEG the tarball to prepare.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RUNS=${RUNS:-$HOME/runs}
CIFAR10_JPEG=${CIFAR10_JPEG:-$REPO/../shared/data/cifar10_jpeg.tar.gz}
VENV=${VENV:-$RUNS/venv}
PY=${PYTHON:-python3}

clone_of() { [ "$1" = jresnet ] && echo "$RUNS/code" || echo "$RUNS/code-torch"; }
workdir_of() { echo "$RUNS/$1-seed"; }
# The exact command each run is started with (and that its snapshot records).
command_of() {
  if [ "$1" = jresnet ]; then
    echo "python train.py --workdir $RUNS/jresnet-seed --config.data_dir=$RUNS/tfds"
  else
    echo "python -m benchmarks.torch_seed train --workdir $RUNS/pytorch-seed --data_dir $RUNS/tfds"
  fi
}
# The command as results/ records it: $HOME written ~ (and $HOME after a '=').
recorded_command() {
  local command
  command=$(command_of "$1")
  command=${command//=$HOME/=\$HOME}
  echo "${command//$HOME/\~}"
}
running() { pgrep -f -- "--workdir $(workdir_of "$1")( |$)" >/dev/null; }

# Epochs recorded in a work directory's metrics.jsonl (its last complete line), 0 if none.
epochs_done() {
  "$PY" - "$(workdir_of "$1")/metrics.jsonl" <<'EOF'
import json, os, sys
path, epoch = sys.argv[1], 0
if os.path.exists(path):
    for line in open(path):
        if line.endswith("\n"):
            epoch = json.loads(line)["epoch"]
print(epoch)
EOF
}
finished() { [ "$(epochs_done "$1")" -ge 200 ]; }

# The run to work on: jresnet's until it has finished, then PyTorch's.
current() {
  if [ -f "$(workdir_of jresnet)/metrics.jsonl" ] && finished jresnet; then echo pytorch
  elif [ ! -d "$(workdir_of jresnet)" ] && grep -q '"finished": true' \
      results/seed-recipe/jresnet/run-info.json 2>/dev/null; then echo pytorch
  else echo jresnet; fi
}

setup() {
  local name=$1 clone commit
  clone=$(clone_of "$name")
  if [ ! -d "$clone" ]; then
    commit=$(git rev-parse HEAD)
    if [ -f "results/seed-recipe/$name/resume/state.json" ]; then
      commit=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["commit"])' \
        "results/seed-recipe/$name/run-info.json")
    fi
    echo "cloning $REPO at $commit into $clone"
    git clone -q "$REPO" "$clone" && git -C "$clone" checkout -q "$commit"
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV (pip install -c constraints.txt -e \"${clone}[bench,export]\")"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -c "$clone/constraints.txt" -e "${clone}[bench,export]"
  fi
  if [ ! -d "$RUNS/tfds/cifar10" ]; then
    (cd "$clone" && "$VENV/bin/python" -m jresnet.prepare_data --from "$CIFAR10_JPEG" \
      --data_dir "$RUNS/tfds")
  fi
  if [ ! -d "$(workdir_of "$name")" ] && [ -f "results/seed-recipe/$name/resume/state.json" ]; then
    "$VENV/bin/python" -m benchmarks.run_state unpack "$name" "$(workdir_of "$name")"
  fi
}

start() {
  local name
  name=$(current)
  mkdir -p "$RUNS"
  setup "$name"
  if running "$name"; then echo "$name is running ($(epochs_done "$name")/200 epochs)"; return; fi
  if finished "$name"; then echo "$name has finished"; return; fi
  echo "=== start $(date -u) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) ===" \
    >>"$RUNS/$name.log"
  # shellcheck disable=SC2046  # the command's words, as command_of prints them
  (cd "$(clone_of "$name")" && PATH="$VENV/bin:$PATH" nohup $(command_of "$name") \
    >>"$RUNS/$name.log" 2>&1 &)
  echo "started $name after $(epochs_done "$name")/200 epochs; log: $RUNS/$name.log"
}

stop() {
  local name
  for name in jresnet pytorch; do
    [ -d "$(workdir_of "$name")" ] || continue
    if running "$name"; then
      pkill -TERM -f -- "--workdir $(workdir_of "$name")( |$)" || true
      while running "$name"; do sleep 2; done
      echo "paused $name"
    fi
    "$VENV/bin/python" -m benchmarks.seed_recipe snapshot "$name" "$(workdir_of "$name")" \
      --clone "$(clone_of "$name")" --venv "$VENV" --command "$(recorded_command "$name")"
    if finished "$name"; then
      rm -rf "results/seed-recipe/$name/resume"
    else
      "$VENV/bin/python" -m benchmarks.run_state pack "$name" "$(workdir_of "$name")"
    fi
  done
  "$VENV/bin/python" -m benchmarks.seed_recipe report results --readme README.md
  echo "now commit results/ and README.md; \`bash tools/seed_recipe.sh start\` resumes"
}

status() {
  local name
  for name in jresnet pytorch; do
    local state="not started"
    [ -d "$(workdir_of "$name")" ] && state="$(epochs_done "$name")/200 epochs"
    running "$name" && state="$state, running"
    echo "$name: $state"
  done
}

case "${1:-}" in
  start | stop | status) "$1" ;;
  *) echo "usage: bash tools/seed_recipe.sh start|stop|status" >&2; exit 2 ;;
esac
