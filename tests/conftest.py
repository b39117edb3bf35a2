from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture
def slurm_data():
    """Read a file of real Slurm output captured from the lab."""
    return lambda name: (DATA / "slurm" / name).read_text()
