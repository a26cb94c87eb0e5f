# Sourced by the scripts here. From the repository root, with a Python that has the
# requirements ($PYTHON, else .venv/bin/python, else python3):
#   launch ENTRY.py FLAGS...  under SLURM (sbatch a .slurm script): srun, one rank per task,
#       each signalled directly; elsewhere launch.py, torchrun on $GPUS processes (default 8)
#       that passes stop signals on and waits for the ranks to save (README: "Stopping and
#       resuming"). Either exits with the ranks' code: 0 after a save at a stop signal.
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

done_or_requeue() {
    [ -f "$1" ] && return 0
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        echo "stopped before $1 was written: requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID"
    else
        echo "stopped before $1 was written: run the same command to resume"
    fi
    exit 0
}
