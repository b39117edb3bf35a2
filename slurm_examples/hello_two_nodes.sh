#!/bin/bash
#SBATCH --job-name=hello
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --comment='{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 10}}'
#
# Two ranks on two nodes, each saying where it runs. `srun -l -u` prefixes every line with its rank,
# which is how the unified log of a real training job looks.
srun -l -u bash -c 'echo "hello from $(hostname) ($(hostname -I | cut -d" " -f1)), attempt ${SLURM_RESTART_COUNT:-0}"; sleep 1; echo "rank $SLURM_PROCID done"'
