"""cluster/slurm.sbatch: the commands it runs on a 3-node SLURM allocation, for a first run and for a requeue.

There is no SLURM here. The test sets the environment SLURM gives a batch script, puts stand-ins for SLURM's
own tools on PATH (``scontrol show hostnames`` expanding the test's node list as SLURM would, ``srun`` answering
the script's address look-ups on each node) and runs the script with ``RAYRS_SLURM_DRY_RUN=1``, which prints
each command that would start a Ray node or the sweep instead of running it. The printed commands are then
parsed by the real programs' own option parsers (Ray's ``ray start``, rayrs's ``sweep``), so a misspelt flag
fails here and not on the cluster.

`test_a_real_sbatch_of_a_tiny_sweep` then submits the script for real, to a single-node SLURM it starts from
Debian's packages (slurmctld, slurmd and munge, as root, in a temporary folder: up in about 5 s). Its tiny sweep
takes about 1.5 minutes on 2 busy cores (Ray's start, one digits epoch, the report, SLURM's 30 s step
teardown), more than the suite's time budget allows, so it runs on demand:
``RAYRS_TEST_SLURM=1 uv run pytest tests/test_slurm.py`` on a machine with ``apt-get install slurmctld slurmd``.
"""

import os
import shlex
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "cluster" / "slurm.sbatch"
VENV = REPO / ".venv"
NODES = ["gpu-a01", "gpu-a02", "gpu-a03"]
NODELIST = "gpu-a[01-03]"
ADDRESSES = {"gpu-a01": "10.1.0.11", "gpu-a02": "10.1.0.12", "gpu-a03": "10.1.0.13"}
SWEEP = "sweeps/quickstart.yaml"  # name: quickstart


def _stub(folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture(scope="module")
def slurm_tools(tmp_path_factory):
    """A folder with ``scontrol`` and ``srun`` stand-ins; srun logs its arguments to ``srun.log`` next to it."""
    tmp_path = tmp_path_factory.mktemp("slurm_tools")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "scontrol", f"""
[[ "$1 $2 $3" == "show hostnames {NODELIST}" ]] || {{ echo "scontrol stand-in: unexpected $*" >&2; exit 1; }}
printf '%s\\n' {' '.join(NODES)}
""")
    # A node may list IPv6 and several IPv4 addresses; the script must pick its first IPv4 one.
    cases = "\n".join(f"    {node}) echo 'fe80::1%eth0 {ip} 192.168.7.7' ;;" for node, ip in ADDRESSES.items())
    _stub(bin_dir, "srun", f"""
echo "$*" >> {tmp_path / 'srun.log'}
[[ "$1 $2 $3" == "--nodes=1 --ntasks=1 -w" && "$5 $6" == "hostname --ip-address" ]] || {{ echo "srun stand-in: unexpected $*" >&2; exit 1; }}
case "$4" in
{cases}
    *) exit 1 ;;
esac
""")
    return bin_dir


@pytest.fixture(scope="module")
def runs(slurm_tools, tmp_path_factory):
    """The printed commands of a first run, a requeue, and a new job onto existing results (3 dry runs)."""
    folder = tmp_path_factory.mktemp("slurm_runs")
    existing = folder / "existing"
    (existing / "quickstart").mkdir(parents=True)
    (existing / "quickstart" / "sweep.json").write_text("{}")
    log = slurm_tools.parent / "srun.log"
    first = _dry_run(slurm_tools, folder / "fresh", restart_count=0)
    asked = log.read_text().splitlines()
    return {
        "fresh": (folder / "fresh", first, asked),
        "requeue": (folder / "requeue", _dry_run(slurm_tools, folder / "requeue", restart_count=1), None),
        "existing": (existing, _dry_run(slurm_tools, existing, restart_count=0), None),
    }


def _dry_run(bin_dir: Path, results: Path, restart_count: int) -> list[list[str]]:
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": NODELIST,
        "SLURM_NNODES": "3",
        "SLURM_JOB_ID": "4242",
        "SLURM_RESTART_COUNT": str(restart_count),
        "SLURM_CPUS_PER_TASK": "8",
        "SLURM_GPUS_PER_TASK": "1",
        "SLURM_SUBMIT_DIR": str(REPO),
        "RAYRS_SLURM_DRY_RUN": "1",
    }
    for name in ("SLURMD_NODENAME", "RAYRS_VENV", "RAYRS_RAY_PORT", "RAYRS_RAY_TEMP_DIR"):
        env.pop(name, None)
    done = subprocess.run(["bash", str(SCRIPT), SWEEP, str(results)], env=env, capture_output=True, text=True,
                          timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in done.stdout.splitlines()]


def _expected_nodes() -> list[list[str]]:
    ray, head = str(VENV / "bin" / "ray"), ADDRESSES["gpu-a01"]
    resources = ["--temp-dir=/tmp/ray-4242", "--num-cpus=8", "--num-gpus=1", "--block"]
    return [
        ["uv", "sync", "--frozen"],
        ["srun", "--nodes=1", "--ntasks=1", "-w", "gpu-a01", ray, "start", "--head", f"--node-ip-address={head}",
         "--port=6379", "--dashboard-host=127.0.0.1", *resources],
        *([["srun", "--nodes=1", "--ntasks=1", "-w", node, ray, "start", f"--address={head}:6379",
            f"--node-ip-address={ADDRESSES[node]}", *resources] for node in NODES[1:]]),
    ]


def test_a_first_run_starts_the_head_joins_the_workers_and_drives_the_sweep(runs):
    results, commands, asked = runs["fresh"]
    driver = [str(VENV / "bin" / "rayrs"), "sweep", SWEEP, "--address=10.1.0.11:6379", f"--results={results}"]
    assert commands == [*_expected_nodes(), driver]
    # Every node's address was asked on that node itself.
    assert sorted(line.split()[3] for line in asked) == NODES


def test_a_requeued_job_resumes_after_the_old_drivers_lease_went_stale(runs):
    results, commands, _ = runs["requeue"]
    driver = [str(VENV / "bin" / "rayrs"), "sweep", SWEEP, "--address=10.1.0.11:6379", f"--results={results}",
              "--resume"]
    assert commands == [*_expected_nodes(), ["sleep", "70"], driver]


def test_a_job_submitted_again_onto_existing_results_resumes(runs):
    """A new job (restart count 0) after one that ran out of time: the experiment's results exist."""
    results, commands, _ = runs["existing"]
    driver = [str(VENV / "bin" / "rayrs"), "sweep", SWEEP, "--address=10.1.0.11:6379", f"--results={results}",
              "--resume"]
    assert commands == [*_expected_nodes(), driver]


def test_the_generated_commands_parse_with_ray_and_rayrs_own_options(runs, monkeypatch):
    """Each `ray start` line through Ray's own click command (parsed, not run), the driver line through
    rayrs's CLI with --dry-run added; and nothing binds to every address."""
    from ray.scripts.scripts import start
    from typer.testing import CliRunner

    from rayrs.cli import app

    _, commands, _ = runs["requeue"]
    assert not any("0.0.0.0" in part for command in commands for part in command)
    for command in commands:
        if command[:1] == ["srun"]:
            start.make_context("start", command[command.index("start") + 1:])  # click's UsageError on a bad option
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, [*commands[-1][1:], "--dry-run"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "quickstart: 3 trials" in result.output


# -- a real SLURM ------------------------------------------------------------------------------------------------
TINY = """
name: slurmtiny
data: {dataset: digits}
model: {arch: wrn, depth: 10, width: 1}
train: {method: standard, epochs: 1, batch_size: 256, lr: 0.05}
eval: {eps: 0.1, attack: {steps: 1}, train_subset: 32, test_subset: 32}
compare: []
"""
SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RAYRS_TEST_SLURM") != "1", reason="on demand: RAYRS_TEST_SLURM=1 (about 1.5 min)")
def test_a_real_sbatch_of_a_tiny_sweep(tmp_path):
    missing = [name for name in SLURM_PROGRAMS if shutil.which(name) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and Debian's slurmctld, slurmd and munge (missing: {', '.join(missing) or 'root'})")
    host = socket.gethostname().split(".")[0]
    (tmp_path / "state").mkdir()
    (tmp_path / "spool").mkdir()
    key = tmp_path / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    ports = [_free_port(), _free_port()]
    conf = tmp_path / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=rayrstest", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmctldPort={ports[0]}",
        f"SlurmdPort={ports[1]}", "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", "CredType=cred/munge",
        f"AuthInfo=socket={tmp_path / 'munge.sock'}", f"StateSaveLocation={tmp_path / 'state'}",
        f"SlurmdSpoolDir={tmp_path / 'spool'}", f"SlurmctldPidFile={tmp_path / 'slurmctld.pid'}",
        f"SlurmdPidFile={tmp_path / 'slurmd.pid'}", f"SlurmctldLogFile={tmp_path / 'slurmctld.log'}",
        f"SlurmdLogFile={tmp_path / 'slurmd.log'}", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none", "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/builtin", "SwitchType=switch/none", "MpiDefault=none", "ReturnToService=2",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", "",
    ]))
    env = {**os.environ, "SLURM_CONF": str(conf), "RAYRS_RAY_PORT": str(_free_port())}
    daemons, ray_folders = [], []
    try:
        daemons.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={tmp_path / 'munge.sock'}",
             f"--pid-file={tmp_path / 'munged.pid'}", f"--log-file={tmp_path / 'munged.log'}",
             f"--seed-file={tmp_path / 'munge.seed'}"], env=env))
        daemons.append(subprocess.Popen(["slurmctld", "-D", "-i"], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))
        daemons.append(subprocess.Popen(["slurmd", "-D", "-N", host], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout.strip() != "idle":
            assert time.monotonic() < deadline, "the test's SLURM did not come up within a minute"
            time.sleep(1)
        sweep = tmp_path / "tiny.yaml"
        sweep.write_text(TINY)
        started = time.time()
        done = subprocess.run(
            ["sbatch", "--wait", "--nodes=1", f"--cpus-per-task={min(2, os.cpu_count())}", "--gpus-per-task=0",
             "--time=10", f"--output={tmp_path / 'job.log'}", str(SCRIPT), str(sweep), str(tmp_path / "results")],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=480,
        )
        log = (tmp_path / "job.log").read_text()
        assert done.returncode == 0, log[-3000:]
        assert "Ray runtime started" in log and "1 trials trained" in log
        import polars as pl

        metrics = pl.read_parquet(tmp_path / "results" / "slurmtiny" / "metrics.parquet")
        assert metrics.select("trial", "epoch").rows() == [("trial", 1)]
        # The job's Ray kept its address file in the job's own folder: none in /tmp/ray for a later ray.init().
        job_id = done.stdout.split()[-1]  # "Submitted batch job 3"
        ray_folders.append(Path(f"/tmp/ray-{job_id}"))
        assert (ray_folders[-1] / "ray_current_cluster").exists()
        assert not Path("/tmp/ray/ray_current_cluster").exists() or Path("/tmp/ray/ray_current_cluster").stat().st_mtime < started
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
            daemon.wait(timeout=30)
        for folder in ray_folders:
            shutil.rmtree(folder, ignore_errors=True)
