"""Cluster tests: one real lab (4 nodes, slurmdbd + MariaDB) for the whole session.

It uses its own name, subnet and ports so it never touches a demo lab (`ajr lab up`) running beside
it. Set AJR_KEEP_LAB=1 to leave it up after the session (the next session reuses it).
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from ajr_supervisor.lab import Lab, LabSpec
from ajr_supervisor.slurm import Slurm
from tests.cluster.helpers import AJR, TRAIN, comment

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


@pytest.fixture
def run_job(jobs, slurm, job_dir):
    """Write an sbatch script (ajr run ... inside) and submit it; returns the job id."""

    def submit(body: str, *, aps: dict | bool | None = None, nodes: int = 2, env: dict | None = None,
               config: str | None = None, extra: tuple[str, ...] = (), name: str = "t") -> str:
        """``aps=False`` submits without an enrollment comment."""
        script = job_dir / "job.sh"
        script.write_text("#!/bin/bash\n" + textwrap.dedent(body))
        job_env = {"AJR": AJR, "PY": sys.executable, "TRAIN": str(TRAIN), "CK": str(job_dir / "ckpt"),
                   "PYTHONUNBUFFERED": "1", **(env or {})}
        if config is not None:
            (job_dir / "ajr.yaml").write_text(config)
            job_env["AJR_CONFIG"] = str(job_dir / "ajr.yaml")
        else:
            job_env["AJR_CONFIG"] = str(job_dir / "none.yaml")
            (job_dir / "none.yaml").write_text("# defaults\n")
        enrol = [] if aps is False else [f"--comment={comment(**(aps or {}))}"]
        return jobs(f"-N{nodes}", "--ntasks-per-node=1", "--requeue", "--open-mode=append",
                    f"--job-name={name}", f"--chdir={job_dir}", f"--output={job_dir}/batch.out",
                    *enrol, *extra, str(script), env=job_env)

    return submit
