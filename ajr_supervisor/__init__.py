"""ajr-supervisor: autonomous job recovery for AI training on Slurm clusters."""

__version__ = "0.1.0"
