"""`tlstudy submit` (study/submit.py) on a real two-node Ray cluster on 127.0.0.1, through Ray's job
system; and Ray's own `ray job submit --working-dir . -- tlstudy run ...` on the same cluster."""

import filecmp
import json
import shutil
import subprocess
import sys
import tempfile

import optuna
import pandas as pd
import psutil
import ray.experimental.internal_kv as internal_kv
from optuna.trial import TrialState
from ray.cluster_utils import Cluster

from conftest import ROOT, free_port

# Two epochs: nothing is pruned, so every trial must run to the end on some node.
TINY = ["--image-size", "16", "--phantom-sizes", "48,40,40", "--max-train", "48", "--epochs", "2"]


def cluster_processes(cluster):
    """Every live process the cluster started, with their descendants (workers, job drivers)."""
    procs = []
    for node in [cluster.head_node, *cluster.worker_nodes]:
        for infos in node.all_processes.values():
            for info in infos:
                try:
                    p = psutil.Process(info.process.pid)
                    procs += [p, *p.children(recursive=True)]
                except psutil.NoSuchProcess:
                    pass
    return procs


def shut_down(cluster):
    """cluster.shutdown(), then SIGKILL whatever of it survived: Ray's processes can ignore SIGTERM."""
    procs = cluster_processes(cluster)
    cluster.shutdown()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=10)
    return alive


def test_submit_runs_the_study_on_both_nodes(tmp_path):
    port = free_port()
    # Cluster() points this process's internal-KV client at its own GCS and shutdown() clears it:
    # put back the one a Ray already started in this process uses (tests/conftest.py's ray_local).
    saved_kv = (internal_kv.global_gcs_client, internal_kv._initialized)
    cluster = Cluster(
        initialize_head=True,
        head_node_args=dict(
            num_cpus=1,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=port,
            dashboard_agent_listen_port=free_port(),
        ),
    )  # not the fixed default: another Ray may hold it
    # The second node gets its own temp dir, as a separate machine would: nodes sharing one
    # runtime_resources folder delete each other's job working_dir when their workers finish.
    node2_tmp = tempfile.mkdtemp(prefix="ray-node2-", dir="/tmp")  # short: Unix socket paths are capped
    survivors = None
    try:
        worker = cluster.add_node(num_cpus=1, resources={"second_node": 1}, temp_dir=node2_tmp)
        cluster.wait_for_nodes()
        nodes = {cluster.head_node.node_id, worker.node_id}
        on_cluster, local = tmp_path / "on_cluster", tmp_path / "local"
        # --max-concurrent 2: Tune starts two trials at once, one per node. Without it, Tune keeps one
        # trial pending at a time, and a reused actor takes each next trial before another node's
        # actor has started, since these tiny trials are shorter than an actor's start-up.
        r = subprocess.run(
            [
                sys.executable,
                str(ROOT / "study" / "submit.py"),
                "--cluster-address",
                f"http://127.0.0.1:{port}",
                "--fetch-to",
                str(local),
                "--space",
                "taskE",
                "--results",
                str(on_cluster),
                *TINY,
                "--budget",
                "1",
                "--seeds",
                "0",
                "--cpus-per-trial",
                "1",
                "--max-concurrent",
                "2",
                "--seed",
                "3",
                "--verbose",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "SUCCEEDED" in r.stdout and "epoch 2/2" in r.stdout  # the job's log streamed here
        assert "tlstudy exports" not in r.stdout  # ... without the exports block

        study = optuna.load_study(study_name="taskE", storage=f"sqlite:///{on_cluster / 'optuna.db'}")
        assert len(study.trials) == 9 and all(t.state == TrialState.COMPLETE for t in study.trials)
        for t in study.trials:
            assert sorted(t.intermediate_values) == [1, 2] and len(json.loads(t.user_attrs["history"])) == 2
            # Search trials (--seeds 0: nothing else) are chosen on val alone and never score the test split.
            assert t.user_attrs["best_val_loss"] == t.value and "test_best_acc" not in t.user_attrs
        assert {t.user_attrs["node_id"] for t in study.trials} == nodes  # both nodes ran trials

        # The exports came back into the local folder, identical to the job's.
        for name in ("trials.csv", "epochs.csv", "best_config.json"):
            assert filecmp.cmp(local / "taskE" / name, on_cluster / "taskE" / name, shallow=False), name
        trials = pd.read_csv(local / "taskE" / "trials.csv")
        assert sorted(trials.number) == list(range(9)) and set(trials.node_id) == nodes
        assert len(pd.read_csv(local / "taskE" / "epochs.csv")) == 9 * 2
        assert json.loads((local / "taskE" / "best_config.json").read_text())["trial"] == study.best_trial.number
        assert not (local / "optuna.db").exists()  # the study stays in the cluster's storage
        # The learning curves came back too: the storage's artifact entries point at them.
        shipped = sorted(p.name for p in (on_cluster / "artifacts").iterdir())
        assert shipped and sorted(p.name for p in (local / "artifacts").iterdir()) == shipped

        # Ray's own command, as the README gives it (about 12 s): this checkout as the working_dir
        # (.rayignore keeps results/, environments and git out), tlstudy run on the cluster, here
        # as `python -m tlstudy` with this interpreter, which the cluster's nodes run too.
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "ray.scripts.scripts",
                "job",
                "submit",
                "--address",
                f"http://127.0.0.1:{port}",
                "--working-dir",
                ".",
                "--",
                sys.executable,
                "-m",
                "tlstudy",
                "run",
                "--space",
                "taskE",
                "--show-config",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert r.returncode == 0 and "succeeded" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
        assert "taskE" in r.stdout
    finally:
        survivors = shut_down(cluster)
        internal_kv.global_gcs_client, internal_kv._initialized = saved_kv
        shutil.rmtree(node2_tmp, ignore_errors=True)
    assert not survivors, f"Ray processes outlived the cluster: {survivors}"


def test_unreachable_cluster_is_a_one_line_error(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "study" / "submit.py"),
            "--cluster-address",
            f"http://127.0.0.1:{free_port()}",
            "--space",
            "taskE",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot reach the Ray job server" in r.stderr
    assert list(tmp_path.iterdir()) == []
