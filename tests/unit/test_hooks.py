from ajr_supervisor.hooks import hook_line, run_hook


def test_hook_line_names_job_node_and_restart():
    env = {"SLURM_JOB_ID": "12", "SLURMD_NODENAME": "node3", "SLURM_JOB_RESTART_COUNT": "2", "HOME": "/x"}
    line = hook_line("prolog", env, 0.0)
    assert " ajr prolog SLURM_JOB_ID=12 SLURMD_NODENAME=node3 SLURM_JOB_RESTART_COUNT=2" in line
    assert "HOME" not in line


def test_run_hook_appends_to_the_hook_log(tmp_path):
    log = tmp_path / "hooks.log"
    run_hook("epilog", {"SLURM_JOB_ID": "1", "AJR_HOOK_LOG": str(log)}, now=0.0)
    run_hook("epilog", {"SLURM_JOB_ID": "2", "AJR_HOOK_LOG": str(log)}, now=0.0)
    lines = log.read_text().splitlines()
    assert [ln.split()[-1] for ln in lines] == ["SLURM_JOB_ID=1", "SLURM_JOB_ID=2"]


def test_run_hook_never_raises_when_the_log_is_unwritable(tmp_path, capsys):
    run_hook("prolog", {"AJR_HOOK_LOG": str(tmp_path / "missing" / "hooks.log")}, now=0.0)
    assert "cannot write" in capsys.readouterr().err


def test_prolog_probes_the_node_when_asked(tmp_path):
    import json

    cfg = tmp_path / "ajr.yaml"
    cfg.write_text("hook_probe: true\n")
    fake = tmp_path / "nvml.json"
    fake.write_text(json.dumps({"gpus": [{"pci": "0000:3b:00.0", "uuid": "GPU-1", "recovery_action": 0,
                                          "ecc_uncorrected_volatile": 3, "temperature": 40}]}))
    log = tmp_path / "hooks.log"
    run_hook("prolog", {"AJR_HOOK_LOG": str(log), "AJR_CONFIG": str(cfg), "AJR_NVML_FAKE": str(fake),
                        "SLURMD_NODENAME": "node3", "SLURM_JOB_ID": "5"}, now=0.0)
    lines = log.read_text().splitlines()
    assert lines[1].split()[1:5] == ["ajr", "health", "node3", "BAD"]
    assert "gpu0.ecc_uncorrected_volatile" in lines[1]


def test_hook_probe_is_off_by_default(tmp_path):
    cfg = tmp_path / "ajr.yaml"
    cfg.write_text("# defaults\n")
    log = tmp_path / "hooks.log"
    run_hook("prolog", {"AJR_HOOK_LOG": str(log), "AJR_CONFIG": str(cfg)}, now=0.0)
    assert len(log.read_text().splitlines()) == 1
