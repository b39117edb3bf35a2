"""A real multi-node Slurm cluster on one machine, for the demo, the cluster tests and benchmarks."""

from ajr_supervisor.lab.cluster import DEFAULT_ROOT, Lab, LabError, install
from ajr_supervisor.lab.spec import LabSpec

__all__ = ["DEFAULT_ROOT", "Lab", "LabError", "LabSpec", "install"]
