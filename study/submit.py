"""Run a study on a Ray cluster through Ray's job system:
    python study/submit.py --cluster-address http://HEAD:8265 --space taskE [run.py's flags]

A thin wrapper over ray.job_submission.JobSubmissionClient. It ships this project
(without results, caches, environments and git) as the job's working_dir, and the
tlstudy package as a py_module, so the cluster needs only the dependencies. The
job runs `study/run.py` with the flags given here on the head node, which joins the
cluster; Ray Tune spreads the trials over every node. The job's log streams to this
terminal. When the job succeeds, its last step packs the study's exports (the
folders RESULTS/<space>/) into its own log, and this script unpacks them into the
local --fetch-to folder (default results/): the Jobs API moves logs, not files, and
the log reaches this machine from any cluster. The Optuna study itself stays in the
storage the job used (--storage; on a real cluster a PostgreSQL/MySQL URL).

The same without this script (tlstudy installed on the cluster, its `python` on PATH):
    ray job submit --address http://HEAD:8265 --working-dir . -- python study/run.py --space taskE --address auto
"""
import argparse
import asyncio
import base64
import io
import os
import shlex
import sys
import tarfile
import time
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

from tlstudy.errors import ArgumentParser, UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "=== tlstudy exports (base64 tar.gz) ===", "=== end of tlstudy exports ==="
# Never shipped: the Jobs API refuses a working_dir over 100 MiB.
EXCLUDES = ["/results/", ".venv/", "venv/", ".ci-venv/", ".git/", "__pycache__/", "*.egg-info/", ".cache/",
            ".pytest_cache/", "*.db", "*.db-*", "build/", "dist/"]
SUBMIT_RETRY_S = 90


def emit_exports(results, names):
    """Inside the job: print the exports folders as one base64 tar.gz between two marker lines."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in names:
            if (Path(results) / name).is_dir():
                tar.add(Path(results) / name, arcname=name)
    print(BEGIN, base64.encodebytes(buf.getvalue()).decode(), END, sep="\n", flush=True)


def unpack_exports(log, dest):
    """The folders emit_exports packed into `log`, extracted under dest; their paths."""
    if BEGIN not in log or END not in log:
        return []
    blob = log.split(BEGIN + "\n", 1)[1].split(END, 1)[0]
    with tarfile.open(fileobj=io.BytesIO(base64.decodebytes(blob.encode())), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
        return sorted({Path(dest) / m.name.split("/")[0] for m in tar.getmembers()})


def parse(argv):
    p = ArgumentParser(prog="study/submit.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Every other flag goes to study/run.py on the cluster (see study/run.py --help).")
    p.add_argument("--cluster-address", default=os.environ.get("RAY_API_SERVER_ADDRESS"),
                   help="the cluster's dashboard / job server, e.g. http://127.0.0.1:8265 "
                        "(default: $RAY_API_SERVER_ADDRESS)")
    p.add_argument("--python", default=sys.executable,
                   help="the cluster's Python with ray and tlstudy's dependencies, as a path on the head node "
                        "(default: this interpreter's path, right when the cluster runs from the same environment)")
    p.add_argument("--fetch-to", default="results", help="unpack the exports into FETCH_TO/<space>/ here")
    return p.parse_known_args(argv)


def job_plan(args, run_argv):
    """The run.py arguments (checked here, before anything is shipped) and the export folders to fetch."""
    from tlstudy import runner, spaces  # here: they import torch, which an unreachable address need not wait for

    run_args = runner.build_parser().parse_args(run_argv)
    if not run_args.space:
        raise UserError("--space is required (see python study/run.py --list-spaces)")
    space = spaces.load(run_args.space)
    if Path(run_args.space).suffix == ".py":  # a space file travels in the working_dir, so it must be inside it
        path = Path(run_args.space).resolve()
        if ROOT not in path.parents:
            raise UserError(f"space file {run_args.space} is outside {ROOT}: copy it into search_spaces/ to ship it")
        i = run_argv.index(run_args.space)
        run_argv = run_argv[:i] + [str(path.relative_to(ROOT))] + run_argv[i + 1:]
    names = [run_args.study_name or space.name, *space.compare]
    return run_argv, run_args.results, names


def entrypoint(python, run_argv, results, names):
    py = shlex.quote(python)
    return (f"{py} study/run.py {shlex.join(run_argv)} && "
            f"{py} study/submit.py --emit-exports {shlex.quote(results)} {shlex.join(names)}")


def connect(address):

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot reach the Ray job server at {address}: {str(e).strip().splitlines()[0]} "
                        "(the head's dashboard address, e.g. http://127.0.0.1:8265)") from None


def submit(client, **kwargs):
    # A cluster that just started answers "No available agent to submit job" until its job agent is up.
    deadline = time.time() + SUBMIT_RETRY_S
    while True:
        try:
            return client.submit_job(**kwargs)
        except (RuntimeError, ValueError) as e:  # refused by the server, or a working_dir over the size limit
            if "No available agent" not in str(e) or time.time() > deadline:
                raise UserError(f"the cluster refused the job: {str(e).strip().splitlines()[0]}") from None
            print("waiting for the cluster's job agent ...", flush=True)
            time.sleep(2)


async def stream(client, job_id):
    """Print the job's log as it comes, without the exports block."""
    hiding, pending = False, ""
    async for chunk in client.tail_job_logs(job_id):
        *lines, pending = (pending + chunk).split("\n")
        for line in lines:
            hiding = (hiding or line == BEGIN) and line != END
            if not hiding and line != END:
                print(line, flush=True)
    if pending and not hiding:
        print(pending, flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--emit-exports"]:
        emit_exports(argv[1], argv[2:])
        return 0
    args, run_argv = parse(argv)
    if not args.cluster_address:
        raise UserError("--cluster-address is required: the cluster's dashboard, e.g. http://127.0.0.1:8265")
    client = connect(args.cluster_address)
    run_argv, results, names = job_plan(args, run_argv)
    runtime_env = {"working_dir": str(ROOT), "py_modules": [str(ROOT / "src" / "tlstudy")], "excludes": EXCLUDES}
    job_id = submit(client, entrypoint=entrypoint(args.python, run_argv, results, names), runtime_env=runtime_env)
    print(f"submitted job {job_id} to {args.cluster_address}", flush=True)
    try:
        asyncio.run(stream(client, job_id))
    except KeyboardInterrupt:
        print(f"\nthe job keeps running; stop it with: ray job stop --address {args.cluster_address} {job_id}",
              file=sys.stderr)
        raise
    info = client.get_job_info(job_id)
    while info.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(1)
        info = client.get_job_info(job_id)
    if info.status != JobStatus.SUCCEEDED:
        hint = (f" (is {args.python} the cluster's Python? pass --python)" if "exit code 127" in (info.message or "")
                else "")
        print(f"job {job_id} {info.status.value}: {info.message}{hint}", file=sys.stderr)
        return 1
    fetched = unpack_exports(client.get_job_logs(job_id), args.fetch_to)
    print(f"job {job_id} SUCCEEDED; exports fetched: {', '.join(map(str, fetched)) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
