from pathlib import Path

import pytest

from ajr_supervisor.errors import UsageError
from ajr_supervisor.lab.spec import HOOKS, LabSpec, render_hook, render_slurm_conf, render_slurmdbd_conf


def conf_dict(text):
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def test_slurm_conf_has_what_the_lab_needs():
    spec = LabSpec(root=Path("/l"), nodes=3)
    conf = conf_dict(render_slurm_conf(spec))
    assert conf["SlurmctldHost"] == ["ctl(10.77.0.1)"]
    assert conf["JobRequeue"] == ["1"]
    assert conf["AuthInfo"] == ["socket=/l/run/munge.socket,cred_expire=5"]
    assert conf["Prolog"] == ["/l/hooks/prolog"]
    assert conf["Epilog"] == ["/l/hooks/epilog"]
    assert conf["EpilogSlurmctld"] == ["/l/hooks/epilog_slurmctld"]
    assert conf["PrologFlags"] == ["Alloc"]
    assert conf["SlurmdSpoolDir"] == ["/l/spool/%n"]
    assert len(conf["NodeName"]) == 3
    assert conf["NodeName"][1].startswith("node2 NodeAddr=10.77.0.12 NodeHostname=node2")
    assert conf["PartitionName"] == ["lab Nodes=ALL Default=YES MaxTime=INFINITE State=UP"]
    assert "AccountingStorageType" not in conf


def test_accounting_adds_slurmdbd_and_its_munge_socket():
    spec = LabSpec(root=Path("/l"), accounting=True, dbd_port=7000)
    conf = conf_dict(render_slurm_conf(spec))
    assert conf["AccountingStorageType"] == ["accounting_storage/slurmdbd"]
    assert conf["AccountingStoragePort"] == ["7000"]
    assert conf["AccountingStoragePass"] == ["/l/run/munge.socket"]
    dbd = conf_dict(render_slurmdbd_conf(spec, "pw"))
    assert dbd["DbdPort"] == ["7000"]
    assert dbd["StoragePass"] == ["pw"]
    assert dbd["AuthInfo"] == ["socket=/l/run/munge.socket"]


def test_two_labs_do_not_collide():
    a = LabSpec(root=Path("/a"))
    b = LabSpec(root=Path("/b"), name="ajrtest", subnet="10.78.0", ctld_port=6827)
    assert {a.bridge, a.netns(1), a.veth_host(1)}.isdisjoint({b.bridge, b.netns(1), b.veth_host(1)})
    assert a.node_addr(1) != b.node_addr(1)
    for name in (b.bridge, b.netns(16), b.veth_host(16), b.veth_node(16)):
        assert len(name) <= 15  # Linux interface names


def test_hook_wrappers_supply_path_and_slurm_conf():
    spec = LabSpec(root=Path("/l"), python="/venv/bin/python")
    text = render_hook(spec, "epilog")
    assert "SLURM_CONF=/l/etc/slurm.conf; export SLURM_CONF" in text
    assert "PATH=" in text
    assert text.rstrip().endswith('exec /venv/bin/python -m ajr_supervisor epilog "$@"')
    assert set(HOOKS.values()) == {"prolog", "node-epilog", "epilog"}


def test_spec_round_trips_through_json():
    spec = LabSpec(root=Path("/x"), nodes=2, accounting=True)
    assert LabSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("kwargs,match", [
    ({"nodes": 0}, "--nodes 0"),
    ({"nodes": 17}, "--nodes 17"),
    ({"name": "Bad-Name"}, "lab name"),
    ({"subnet": "10.300.0"}, "subnet"),
    ({"cred_expire_s": 2}, "cred_expire"),
])
def test_bad_specs_are_one_line_errors(kwargs, match):
    with pytest.raises(UsageError, match=match) as info:
        LabSpec(root=Path("/l"), **kwargs)
    assert "\n" not in info.value.one_line()
