#!/usr/bin/env bash
# The seed recipe's two long runs (README "Results") across sittings and machines.
#
#   bash tools/seed_recipe.sh start    # set up what this machine lacks, then (re)start the run
#   bash tools/seed_recipe.sh save     # pack the runs' state, snapshot, write the report
#   bash tools/seed_recipe.sh stop     # pause the runs, then save
#   bash tools/seed_recipe.sh status   # how far each run got, running or not
#
# The runs go one after the other: jresnet's, then the seed's PyTorch loop; a run is finished
# when its work directory or results/ says so. `start` makes, where missing, the data dir
# (python -m jresnet.prepare_data), the run's clone at its commit (the one its packed state
# in results/seed-recipe/NAME/resume/ names, else this repository's HEAD for a new run) and
# a venv; puts the packed state into the work directory (python -m benchmarks.run_state
# unpack: a work directory with the same run as far along or further is kept, any other is
# moved aside); then starts the run's command in the background (setsid nohup, output
# appended to RUNS/NAME.log) unless it is running or has finished, and waits until it holds
# its work directory's lock. When jresnet's run finishes, PyTorch's starts by itself, unless
# stop came first. It refuses to start afresh a run that results/ holds unfinished without
# a packed state (FRESH=1 does). `save` packs each run's state with its records (or, once
# it has finished, removes its resume/), snapshots it into results/ and writes the report
# and README.md's table (benchmarks.seed_recipe); a live run goes on, and its pack holds its
# newest complete checkpoint. `stop` first sends each running run SIGTERM and waits for it
# (jresnet saves inside the epoch; torch_seed loses the epoch in progress). Both leave a run
# that results/ already holds finished alone. Commit results/ and README.md after either.
# start, save and stop take RUNS/.seed_recipe.lock: one runs at a time.
# Run it from the repository root.
# Settings: RUNS (default ~/runs) holds everything, VENV (default RUNS/venv) is the runs'
# venv, RESULTS (default results) the results directory, CIFAR10_JPEG the tarball to
# prepare, PYTHON the interpreter that makes the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RUNS=${RUNS:-$HOME/runs}
VENV=${VENV:-$RUNS/venv}
RESULTS=${RESULTS:-results}
CIFAR10_JPEG=${CIFAR10_JPEG:-$REPO/../shared/data/cifar10_jpeg.tar.gz}
PY=${PYTHON:-python3}
EPOCHS=200 # the seed recipe's
STOP_TIMEOUT_S=600 # how long start and stop wait for a run to take or leave its lock
SCRIPT_LOCK=$RUNS/.seed_recipe.lock # held by start, save and stop: one at a time
STOPPED=$RUNS/.stopped              # left by stop, removed by start: no next run by itself

clone_of() { if [ "$1" = jresnet ]; then echo "$RUNS/code"; else echo "$RUNS/code-torch"; fi; }
workdir_of() { echo "$RUNS/$1-seed"; }
results_of() { echo "$RESULTS/seed-recipe/$1"; }
# The exact command each run is started with.
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

# A run holds its work directory's lock (jresnet.workdir) for its whole life, and the lock
# file names its pid (pid_of: nothing once the run has removed it). lslocks lists the locks
# held without taking one (flock -n would, for an instant in which a starting run would
# find its work directory in use).
lock_of() { echo "$(workdir_of "$1")/.lock"; }
running() { lslocks --noheadings --output PATH | grep -Fxq "$(realpath -m "$(lock_of "$1")")"; }
pid_of() { sed -n 's/^pid \([0-9]*\) .*/\1/p' "$(lock_of "$1")" 2>/dev/null || true; }

# Takes SCRIPT_LOCK on descriptor 9 for the rest of this script's life (the runs it starts
# do not inherit it), so that start, save and stop never overlap, a chained start included.
take_script_lock() {
  mkdir -p "$RUNS"
  exec 9>>"$SCRIPT_LOCK"
  if ! flock -w "$STOP_TIMEOUT_S" 9; then
    echo "another 'bash tools/seed_recipe.sh start|save|stop' holds $SCRIPT_LOCK" >&2
    exit 1
  fi
}

# A JSON field of a file, or nothing if the file or the field is missing.
json_field() {
  "$PY" - "$1" "$2" <<'EOF'
import json, os, sys
path, field = sys.argv[1:]
if os.path.exists(path):
    value = json.load(open(path)).get(field)
    print("" if value is None else str(value).lower() if isinstance(value, bool) else value)
EOF
}
# Epochs recorded in a work directory (its metrics.jsonl's complete lines), 0 if none; with
# a second argument "progress", "N/200 epochs" and the last and best test accuracy.
epochs_done() {
  "$PY" - "$(workdir_of "$1")/metrics.jsonl" "${2:-}" "$EPOCHS" <<'EOF'
import json, sys
path, what, num_epochs = sys.argv[1:]
records = []
try:
    for line in open(path):
        if not line.endswith("\n"):
            break
        records.append(json.loads(line))
except (OSError, ValueError):
    pass
epochs = records[-1]["epoch"] if records else 0
if what != "progress":
    print(epochs)
elif not records:
    print(f"0/{num_epochs} epochs")
else:
    best = max(records, key=lambda r: r["eval_accuracy"])
    print(
        f"{epochs}/{num_epochs} epochs, test accuracy {records[-1]['eval_accuracy']:.2%}"
        f" (best {best['eval_accuracy']:.2%} at epoch {best['epoch']})"
    )
EOF
}
finished_here() { [ "$(epochs_done "$1")" -ge "$EPOCHS" ]; }
committed_finished() { [ "$(json_field "$(results_of "$1")/run-info.json" finished)" = true ]; }
# Finished, here or in results/ (whatever an older work directory left here says).
finished() { finished_here "$1" || committed_finished "$1"; }

# The run to work on: jresnet's until it has finished, then PyTorch's.
current() { if finished jresnet; then echo pytorch; else echo jresnet; fi; }

setup() {
  local name=$1 clone packed commit
  clone=$(clone_of "$name")
  packed=$(results_of "$name")/resume/state.json
  if [ ! -f "$packed" ] && [ ! -d "$(workdir_of "$name")" ] && [ -z "${FRESH:-}" ] &&
    [ -f "$(results_of "$name")/run-info.json" ] && ! committed_finished "$name"; then
    echo "$(results_of "$name") holds an unfinished run but no packed state (resume/), and" \
      "$(workdir_of "$name") is missing: nothing to resume. FRESH=1 starts it afresh" \
      "(its next snapshot replaces the one in results/)." >&2
    exit 1
  fi
  commit=""
  if [ -f "$packed" ]; then
    commit=$(json_field "$packed" commit)
    commit=${commit:-$(json_field "$(results_of "$name")/run-info.json" commit)}
    if [ -z "$commit" ]; then
      echo "$packed names no commit (packed without --clone) and there is no run-info.json:" \
        "clone the run's commit into $clone by hand" >&2
      exit 1
    fi
  fi
  if [ ! -d "$clone" ]; then
    commit=${commit:-$(git rev-parse HEAD)}
    echo "cloning $REPO at $commit into $clone"
    git clone -q "$REPO" "$clone"
    git -C "$clone" checkout -q "$commit"
  elif [ -n "$commit" ] && [ "$(git -C "$clone" rev-parse HEAD)" != "$commit" ]; then
    if [ -n "$(git -C "$clone" status --porcelain)" ]; then
      echo "$clone is not at $commit, the packed run's commit, and has changes:" \
        "move it aside to let start clone that commit" >&2
      exit 1
    fi
    echo "checking out $commit, the packed run's commit, in $clone"
    git -C "$clone" fetch -q "$REPO"
    git -C "$clone" checkout -q "$commit"
  fi
  # What the runs import: a venv that lacks any is (re)installed.
  if ! "$VENV/bin/python" -c "import jresnet, torch, safetensors" 2>/dev/null; then
    echo "installing $VENV (pip install -c constraints.txt -e \"${clone}[bench,export]\")"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -c "$clone/constraints.txt" -e "${clone}[bench,export]"
  fi
  if [ ! -d "$RUNS/tfds/cifar10" ]; then
    (cd "$clone" && "$VENV/bin/python" -m jresnet.prepare_data --from "$CIFAR10_JPEG" \
      --data_dir "$RUNS/tfds")
  fi
  if [ -f "$packed" ]; then
    "$VENV/bin/python" -m benchmarks.run_state unpack "$name" "$(workdir_of "$name")" \
      --results "$RESULTS"
  fi
}

start() {
  local name pid waited
  name=$(current)
  rm -f "$STOPPED"
  if running "$name"; then echo "$name is running ($(epochs_done "$name")/$EPOCHS epochs)"; return; fi
  if finished "$name"; then echo "$name has finished"; return; fi
  setup "$name"
  echo "=== start $(date -u) on$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) ===" \
    >>"$RUNS/$name.log"
  setsid nohup bash "$REPO/tools/seed_recipe.sh" run "$name" >>"$RUNS/$name.log" 2>&1 9>&- &
  pid=$!
  # Started once it holds its work directory's lock (after its imports), or has finished.
  waited=0
  until running "$name" || finished_here "$name"; do
    if ! kill -0 "$pid" 2>/dev/null || [ "$waited" -ge "$STOP_TIMEOUT_S" ]; then
      echo "$name did not start (pid $pid); the end of $RUNS/$name.log:" >&2
      tail -5 "$RUNS/$name.log" >&2
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  echo "started $name (pid $(pid_of "$name")) after $(epochs_done "$name")/$EPOCHS epochs; log: $RUNS/$name.log"
}

# What start runs in the background: the run's command from its clone, then, once jresnet's
# run has finished (and exited 0), start again, which starts PyTorch's (no sitting lost
# between the two) unless stop came first.
run() {
  local name=$1 status=0
  cd "$(clone_of "$name")"
  # shellcheck disable=SC2046  # the command's words, as command_of prints them
  PATH="$VENV/bin:$PATH" $(command_of "$name") || status=$?
  cd "$REPO"
  if [ "$name" = jresnet ] && [ "$status" = 0 ] && finished_here jresnet; then
    take_script_lock
    if [ -e "$STOPPED" ]; then
      echo "=== jresnet has finished $(date -u); stopped: the next run waits for start ==="
    else
      echo "=== jresnet has finished $(date -u): starting the next run ==="
      unset FRESH # the first run's setting, not the next one's
      start
    fi
  fi
  return "$status"
}

# Sends a running run SIGTERM and waits until it has let go of its work directory.
pause() {
  local name=$1 pid waited=0
  running "$name" || return 0
  pid=$(pid_of "$name")
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
  while running "$name"; do
    if [ "$waited" -ge "$STOP_TIMEOUT_S" ]; then
      echo "$name (pid $pid) still runs after $STOP_TIMEOUT_S s; not packed" >&2
      exit 1
    fi
    sleep 2
    waited=$((waited + 2))
  done
  echo "paused $name"
}

# Packs each run's state (a finished run's resume/ is removed), snapshots it and writes the
# report; a live run goes on (its pack holds its newest complete checkpoint).
save() {
  local name failed=0
  for name in jresnet pytorch; do
    [ -d "$(workdir_of "$name")" ] || continue
    # A run results/ holds finished has its final snapshot there: nothing to pack or redo.
    committed_finished "$name" && continue
    if finished_here "$name"; then
      rm -rf "$(results_of "$name")/resume"
    else
      "$VENV/bin/python" -m benchmarks.run_state pack "$name" "$(workdir_of "$name")" \
        --clone "$(clone_of "$name")" --results "$RESULTS" || failed=1
    fi
    "$VENV/bin/python" -m benchmarks.seed_recipe snapshot "$name" "$(workdir_of "$name")" \
      --clone "$(clone_of "$name")" --venv "$VENV" --command "$(recorded_command "$name")" \
      --results "$RESULTS" || failed=1
  done
  "$VENV/bin/python" -m benchmarks.seed_recipe report "$RESULTS" --readme README.md || failed=1
  if [ "$failed" = 1 ]; then
    echo "some steps failed (above); fix them before committing results/" >&2
    exit 1
  fi
  echo "now commit results/ and README.md"
}

stop() {
  local name
  touch "$STOPPED"
  for name in jresnet pytorch; do
    if [ -d "$(workdir_of "$name")" ] && ! committed_finished "$name"; then pause "$name"; fi
  done
  save
  echo "\`bash tools/seed_recipe.sh start\` resumes"
}

status() {
  local name state
  for name in jresnet pytorch; do
    state="no work directory"
    [ -d "$(workdir_of "$name")" ] && state=$(epochs_done "$name" progress)
    running "$name" && state="$state, running (pid $(pid_of "$name"))"
    [ -f "$(results_of "$name")/resume/state.json" ] && state="$state; a packed state waits"
    echo "$name: $state"
  done
}

# Each branch ends in exit: a run's bash reads no further even if this file changes under it.
case "${1:-}" in
  start | save | stop)
    take_script_lock
    "$1"
    exit
    ;;
  status)
    status
    exit
    ;;
  run)
    run "${2:?usage: bash tools/seed_recipe.sh run jresnet|pytorch}"
    exit
    ;;
  *)
    echo "usage: bash tools/seed_recipe.sh start|save|stop|status" >&2
    exit 2
    ;;
esac
