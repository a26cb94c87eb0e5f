# Sourced by the scripts here. From the repository root, with a Python that has the
# requirements ($PYTHON, else .venv/bin/python, else python3):
#   launch ENTRY.py FLAGS...  under SLURM (sbatch a .slurm script): srun, one rank per task,
#       each signalled directly; elsewhere launch.py, torchrun on $GPUS processes (default 8)
#       that passes stop signals on and waits for the ranks to save (README: "Stopping and
#       resuming"). Either exits with the ranks' code: 0 after a save at a stop signal.
#   run_or_requeue FILE ENTRY.py FLAGS...  launch, then by the exit code (README: exit codes):
#       0: done_or_requeue FILE; 5 (interrupted by what a new allocation may not meet: a
#       hung read, a lost node or worker; the run saved) requeues, at most 3 times in a row
#       (counted in FILE's folder, reset by a 0); any other code ends the job with it.
#   done_or_requeue FILE  goes on only once FILE (a run's last output) exists; else the run
#       stopped after saving: under SLURM the job requeues itself, elsewhere this says to run
#       the same command again (it resumes).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
"$PYTHON" -c "import torch, cv2, timm, open_clip" 2>/dev/null || {
    echo "error: $PYTHON lacks the requirements; first run:" >&2
    echo "  python3 -m venv .venv && .venv/bin/pip install -r requirements.txt" >&2
    exit 1; }

launch() {
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        # one math thread per rank, as torchrun sets: the data workers have the other cores
        OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} srun --kill-on-bad-exit=1 "$PYTHON" -u "$@"
    else
        "$PYTHON" launch.py --standalone --nproc_per_node "${GPUS:-8}" "$@"
    fi
}

run_or_requeue() {
    local done=$1 code=0 count n
    shift
    launch "$@" || code=$?
    count="$(dirname "$done")/.exit5_in_a_row"
    if [ "$code" = 5 ]; then
        n=$(( $(cat "$count" 2>/dev/null || echo 0) + 1 ))
        mkdir -p "$(dirname "$count")" && echo "$n" > "$count"
        if [ "$n" -ge 3 ]; then
            echo "error: the run ended with exit code 5 $n times in a row (its error: lines" \
                 "above say why): not requeued again; fix the cause, then run the same command" >&2
            exit 5
        fi
        requeue_or_say "exit code 5, $n of 3 in a row" 5
    fi
    rm -f "$count"
    [ "$code" = 0 ] || exit "$code"
    done_or_requeue "$done"
}

done_or_requeue() {
    [ -f "$1" ] && return 0
    requeue_or_say "stopped before $1 was written" 0
}

requeue_or_say() {  # WHY CODE: under SLURM requeue the job (and end this run of it with 0)
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        echo "$1: requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    fi
    echo "$1: run the same command to resume"
    exit "$2"
}
