"""scripts/gpu_check.sh: its dry run on CPU (the same steps at toy sizes)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_check_passes_its_dry_run_on_cpu(tmp_path):
    run = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry_run"], cwd=ROOT, capture_output=True, text=True,
                         env={"GPU_CHECK_OUT": str(tmp_path), "PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
                         timeout=1800)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    table = run.stdout.split("| step | seconds | result |")[1]
    assert table.count("| PASS |") == 5
    assert "(DDP, gloo)" in (tmp_path / "stage_two_ddp.log").read_text()
    assert "host_syncs_per_gradient_pass" in (tmp_path / "bench_overhead.json").read_text()
