"""Cluster tests: one real lab (4 nodes, slurmdbd + MariaDB) for the whole session.

It uses its own name, subnet and ports so it never touches a demo lab (`ajr lab up`) running beside
it. Set AJR_KEEP_LAB=1 to leave it up after the session (the next session reuses it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ajr_supervisor.lab import Lab, LabSpec
from ajr_supervisor.slurm import Slurm

TEST_LAB = LabSpec(root=Path(os.environ.get("AJR_TEST_LAB_DIR", "/tmp/ajr-test-lab")), name="ajrtest",
                   nodes=4, subnet="10.78.0", ctld_port=6827, dbd_port=6829, db_port=3327,
                   accounting=True)


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def lab():
    lab = Lab(TEST_LAB)
    seconds = lab.up()
    print(f"\ntest lab up in {seconds:.2f} s at {TEST_LAB.root}")
    yield lab
    if not os.environ.get("AJR_KEEP_LAB"):
        lab.down()


@pytest.fixture
def slurm(lab) -> Slurm:
    return Slurm(str(lab.spec.slurm_conf), timeout_s=30)


@pytest.fixture
def jobs(slurm):
    """Submit jobs through this; they are cancelled when the test ends."""
    submitted: list[str] = []

    def submit(*args: str, env: dict[str, str] | None = None) -> str:
        """sbatch ARGS; ``env`` adds variables to the job's environment (sbatch exports them)."""
        runner = slurm if env is None else Slurm(slurm.conf, timeout_s=slurm.timeout_s,
                                                 env={**os.environ, **env})
        job_id = runner.sbatch(list(args))
        submitted.append(job_id)
        return job_id

    yield submit
    for job_id in submitted:
        try:
            slurm.scancel(job_id)
        except Exception:
            pass


@pytest.fixture
def job_dir(tmp_path) -> Path:
    tmp_path.chmod(0o755)
    return tmp_path
