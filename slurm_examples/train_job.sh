#!/bin/bash
#SBATCH --job-name=train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --comment='{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 5}}'
#
# A training job under ajr: the only changes from a plain script are the --comment line above and
# `ajr run --` in place of `srun -l -u`. The trainer saves checkpoints and resumes from the latest,
# so a requeued attempt continues where the last one stopped.
#
# Extra trainer arguments (fault injection in the demo) come from $TRAIN_ARGS.
set -u
here=${EXAMPLES_DIR:-$(dirname "$(readlink -f "$0")")}
${AJR:-ajr} run -- "${PYTHON:-python3}" "$here/train.py" \
    --iters "${ITERS:-30}" --step-s "${STEP_S:-0.1}" --ckpt-dir "${CKPT_DIR:-$PWD/ckpt}" --ckpt-every 5 \
    ${TRAIN_ARGS:-}
