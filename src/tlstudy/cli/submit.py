"""A study as a Ray job: `tlstudy submit` (and study/submit.py).

    tlstudy submit --cluster-address http://HEAD:8265 --space taskE [tlstudy run's flags]

A thin wrapper over ray.job_submission.JobSubmissionClient. It ships the current folder
as the job's working_dir (without results, caches, environments and git: EXCLUDES, the
same as .rayignore) and the tlstudy package, with its search spaces and reference
numbers, as a py_module, so the cluster needs only the dependencies. The job runs
`tlstudy run` with the flags given here on the head node, which joins the cluster; Ray
Tune spreads the trials over every node. The job's log streams to this terminal. When
the job succeeds, its last step packs the study's exports (the folders RESULTS/<space>/)
and the trials' learning-curve artifacts (RESULTS/artifacts/) into its own log, and this
side unpacks them into the local --fetch-to folder: the Jobs API moves logs, not files,
and the log reaches this machine from any cluster. The Optuna study itself stays in the
storage the job used (--storage; on a real cluster a PostgreSQL/MySQL URL).

The same without the fetching, with tlstudy installed on the cluster:
    ray job submit --address http://HEAD:8265 --working-dir . -- tlstudy run --space taskE

The arguments are parsed and checked in tlstudy.cli; Ray is imported only to submit.
"""

import asyncio
import base64
import io
import os
import shlex
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from tlstudy import spaces
from tlstudy.cli import parsers
from tlstudy.cli.command_line import replace_option
from tlstudy.errors import UserError
from tlstudy.study.storage import display_url, password

BEGIN, END = "=== tlstudy exports (base64 tar.gz) ===", "=== end of tlstudy exports ==="
# Never shipped: the Jobs API refuses a working_dir over 100 MiB. .rayignore holds the same.
EXCLUDES = [
    "/results/",
    ".venv/",
    "venv/",
    ".ci-venv/",
    ".git/",
    "__pycache__/",
    "*.egg-info/",
    ".cache/",
    ".pytest_cache/",
    "*.db",
    "*.db-*",
    "build/",
    "dist/",
]
SUBMIT_RETRY_S = 90
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")  # as `ray job submit`, in Ray's order


def add_flags(p):
    """The flags of `tlstudy submit` (every other flag goes to `tlstudy run` on the cluster)."""
    parsers._describe(
        p,
        "Ships the current folder as the job's working_dir (without results, environments, caches, "
        "git: .rayignore) and the tlstudy package with its search spaces as a py_module, runs "
        "`tlstudy run` with the flags given here on the cluster, streams the job's log and, when the "
        "job succeeds, fetches the exports and the learning-curve artifacts into --fetch-to. The "
        "Optuna study stays in the storage the job used.",
    )
    p.epilog = "Every other flag goes to `tlstudy run` on the cluster (see tlstudy run --help)."
    p.add_argument(
        "--cluster-address",
        help="the cluster's dashboard / job server, e.g. http://127.0.0.1:8265 (default, as `ray job "
        "submit`: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS; either, when set, wins over this flag)",
    )
    p.add_argument(
        "--python",
        default=sys.executable,
        help="the cluster's Python with ray and tlstudy's dependencies, as a path on the head node "
        "(default: this interpreter's path, right when the cluster runs from the same environment)",
    )
    p.add_argument("--fetch-to", default="results", help="unpack the exports into FETCH_TO/<space>/ here")


def emit_exports(results, names):
    """Inside the job: print the folders RESULTS/NAME as one base64 tar.gz between two marker lines."""
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
        safe_extract(tar, dest)
        return sorted({Path(dest) / m.name.split("/")[0] for m in tar.getmembers()})


def safe_extract(tar, dest):
    """Extract `tar` under dest, refusing members that would land or point outside it.
    Python's "data" filter does that where it exists (3.10.12+, 3.11.4+, 3.12+); older
    interpreters get the same checks here: no absolute paths, no "..", no links leading
    out, nothing but files, folders and links."""
    if hasattr(tarfile, "data_filter"):
        try:
            tar.extractall(dest, filter="data")
        except (tarfile.TarError, KeyError) as e:  # FilterError; a hard link to a member not there
            raise UserError(f"refusing to unpack the job's exports: {e}") from None
        return
    root = Path(dest).resolve()

    def inside(path):
        return path == root or root in path.parents

    # One member at a time, each checked against what is on disk by then: a link extracted
    # earlier may redirect a later member's path (a chain of links).
    for m in tar.getmembers():
        name = Path(m.name)
        target = (root / name).resolve()
        if name.is_absolute() or ".." in name.parts or not inside(target):
            raise UserError(f"refusing to unpack the job's exports: {m.name!r} is outside {dest}")
        if m.issym() or m.islnk():
            link = (target.parent if m.issym() else root) / m.linkname
            if Path(m.linkname).is_absolute() or not inside(link.resolve()):
                raise UserError(f"refusing to unpack the job's exports: {m.name!r} links outside {dest}")
        elif not (m.isfile() or m.isdir()):
            raise UserError(f"refusing to unpack the job's exports: {m.name!r} is not a file or folder")
        m.mode &= 0o755  # no setuid, setgid or world-writable bits
        tar.extract(m, root)


def job_plan(run_parser, run_argv, run_args, workdir):
    """The `tlstudy run` arguments for the job and the folders to fetch back. A space file given
    by path travels in the working_dir (the current folder), so it must be inside it."""
    space = spaces.load(run_args.space)
    if Path(run_args.space).suffix == ".py":
        path = Path(run_args.space).resolve()
        if workdir not in path.parents:
            raise UserError(
                f"space file {run_args.space} is outside the folder the job ships ({workdir}): "
                "run from a folder that holds it, or copy it into ./search_spaces/"
            )
        run_argv = replace_option(run_parser, run_argv, "--space", lambda _: str(path.relative_to(workdir)))
    names = [run_args.study_name or space.name, *space.compare, "artifacts"]
    return run_argv, run_args.results, names


def entrypoint(python, run_argv, results, names):
    py = shlex.quote(python)
    return (
        f"{py} -m tlstudy run {shlex.join(run_argv)} && "
        f"{py} -m tlstudy.cli.submit --emit-exports {shlex.quote(results)} {shlex.join(names)}"
    )


def stage_package(folder):
    """A copy of the tlstudy package under folder/tlstudy, with the search spaces and reference
    numbers inside it as an installed wheel has them (a checkout keeps them at the top level)."""
    import tlstudy

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    dst = Path(folder) / "tlstudy"
    shutil.copytree(Path(tlstudy.__file__).parent, dst, ignore=ignore)
    for name, source in (
        ("search_spaces", spaces.shipped("search_spaces", "search_spaces")),
        ("reference", spaces.reference_dir()),
    ):
        if not (dst / name).is_dir() and source.is_dir():
            shutil.copytree(source, dst / name, ignore=ignore)
    return dst


def job_server(flag, environ=os.environ):
    """The job server address JobSubmissionClient(flag) goes to, and where it comes from. As
    `ray job submit` (ray.dashboard.utils.get_address_for_submission_client): RAY_API_SERVER_ADDRESS
    when set, else RAY_ADDRESS when set, else the flag; None when there is none."""
    for variable in ADDRESS_VARIABLES:
        if environ.get(variable):
            return environ[variable], f"${variable}"
    return flag, "--cluster-address"


def connect(flag):
    from ray.job_submission import JobSubmissionClient

    address, source = job_server(flag)
    try:
        return JobSubmissionClient(flag)  # Ray applies the same order itself
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UserError(
            f"cannot reach the Ray job server at {address} (from {source}): "
            f"{str(e).strip().splitlines()[0]} (the head's dashboard address, e.g. http://127.0.0.1:8265)"
        ) from None


def submit_job(client, **kwargs):
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


def submit(args, run_parser, run_argv, run_args):
    """Submit `tlstudy run RUN_ARGV` as a job, stream it, fetch its exports; the exit status."""
    if not job_server(args.cluster_address)[0]:
        raise UserError(
            "--cluster-address is required (or RAY_API_SERVER_ADDRESS / RAY_ADDRESS): the cluster's "
            "dashboard, e.g. http://127.0.0.1:8265"
        )
    if run_args.storage and password(run_args.storage):
        raise UserError(
            f"--storage {display_url(run_args.storage)} holds a password, which Ray would keep in the "
            "job's entrypoint for anyone who can list the cluster's jobs: leave it out of the URL and "
            "give it to the cluster as PGPASSWORD or in ~/.pgpass on the head node"
        )
    client = connect(args.cluster_address)
    workdir = Path.cwd().resolve()
    run_argv, results, names = job_plan(run_parser, run_argv, run_args, workdir)
    from ray.job_submission import JobStatus

    with tempfile.TemporaryDirectory(prefix="tlstudy-job-") as tmp:
        runtime_env = {"working_dir": str(workdir), "py_modules": [str(stage_package(tmp))], "excludes": EXCLUDES}
        job_id = submit_job(
            client, entrypoint=entrypoint(args.python, run_argv, results, names), runtime_env=runtime_env
        )
    address = display_url(client.get_address())
    print(f"submitted job {job_id} to {address}", flush=True)
    try:
        asyncio.run(stream(client, job_id))
    except KeyboardInterrupt:
        print(f"\nthe job keeps running; stop it with: ray job stop --address {address} {job_id}", file=sys.stderr)
        raise
    info = client.get_job_info(job_id)
    while info.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(1)
        info = client.get_job_info(job_id)
    if info.status != JobStatus.SUCCEEDED:
        hint = (
            f" (is {args.python} the cluster's Python? pass --python)"
            if "exit code 127" in (info.message or "")
            else ""
        )
        print(f"job {job_id} {info.status.value}: {info.message}{hint}", file=sys.stderr)
        return 1
    fetched = unpack_exports(client.get_job_logs(job_id), args.fetch_to)
    print(f"job {job_id} SUCCEEDED; exports fetched: {', '.join(map(str, fetched)) or 'none'}")
    return 0


if __name__ == "__main__":  # the job's last step: python -m tlstudy.cli.submit --emit-exports RESULTS NAME...
    if sys.argv[1:2] != ["--emit-exports"] or len(sys.argv) < 3:
        sys.exit("usage: python -m tlstudy.cli.submit --emit-exports RESULTS NAME...")
    emit_exports(sys.argv[2], sys.argv[3:])
