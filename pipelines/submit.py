"""``fmgnn submit`` / ``status`` / ``logs`` / ``stop``: the jobs on a Ray cluster, through the Jobs API.

    fmgnn submit --address http://127.0.0.1:8265 -- train bleg --config configs/bleg.yaml cohort=/mnt/c.parquet
    fmgnn status --address http://127.0.0.1:8265            # every job; or: fmgnn status JOB_ID
    fmgnn logs JOB_ID --address http://127.0.0.1:8265
    fmgnn stop JOB_ID --address http://127.0.0.1:8265

``submit`` is ``ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python -m
pipelines.cli JOB ARGS`` with those filled in: the repo (minus .gitignore'd and excluded paths) is
uploaded, and the job runs the same ``fmgnn`` subcommand on the cluster. Paths in ARGS are read on the
cluster, so cohorts and run directories must live where every node sees them (a shared volume, or
s3:// / gs:// for checkpoints). The address is ``--address``, else ``RAY_API_SERVER_ADDRESS`` or
``RAY_ADDRESS`` (an ``http://`` dashboard address), else the local dashboard.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from fmgnn.errors import InputError

REPO = Path(__file__).resolve().parents[1]
RUNTIME_ENV = REPO / "cluster" / "runtime_env.yaml"
LOCAL_DASHBOARD = "http://127.0.0.1:8265"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def default_address() -> str:
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(name, "")
        if value.startswith(("http://", "https://")):
            return value
    return LOCAL_DASHBOARD


def use_token_if_present() -> None:
    """Send Ray's auth token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ~/.ray/auth_token) when one exists.

    Clusters run with token authentication (cluster/*.yaml). ``ray.init`` turns it on by itself when
    it finds a token; the Jobs API client does not, so without this every call would need
    ``RAY_AUTH_MODE=token`` in the environment.
    """
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def job_client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    use_token_if_present()
    return JobSubmissionClient(address or default_address())


def runtime_env(path: Path | None, working_dir: Path) -> dict[str, Any]:
    """The runtime env file with the working dir set; a missing or malformed file is an error naming it."""
    env: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"--runtime-env: {path} does not exist")
        env = yaml.safe_load(path.read_text()) or {}
        if not isinstance(env, dict):
            raise InputError(f"{path}: a runtime env is a mapping (working_dir, excludes, env_vars...)")
    return {**env, "working_dir": str(working_dir)}


def submit(job_args: list[str], address: str | None = None, runtime_env_file: Path | None = RUNTIME_ENV,
           working_dir: Path = REPO, submission_id: str | None = None, driver_resource: str | None = None) -> str:
    """Submit ``fmgnn JOB_ARGS`` as a Ray job; returns its submission id. With ``driver_resource`` the driver
    reserves one unit of that resource (``fmgnn_driver``, which the heads in cluster/ advertise four of)."""
    if not job_args:
        raise InputError("give the job to run, e.g. fmgnn submit -- train bleg --config configs/bleg.yaml")
    entrypoint = shlex.join(["python", "-m", "pipelines.cli", *job_args])
    return job_client(address).submit_job(entrypoint=entrypoint, submission_id=submission_id,
                                          runtime_env=runtime_env(runtime_env_file, working_dir),
                                          entrypoint_resources={driver_resource: 1} if driver_resource else None)


def follow(job_id: str, address: str | None = None, poll_s: float = 2.0, out=sys.stdout) -> str:
    """Print a job's logs as they grow until it ends; returns its final status."""
    client, printed = job_client(address), 0
    while True:
        status = str(client.get_job_status(job_id).value)
        logs = client.get_job_logs(job_id)
        out.write(logs[printed:])
        out.flush()
        printed = len(logs)
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def status_table(address: str | None = None) -> str:
    jobs = sorted(job_client(address).list_jobs(), key=lambda j: j.start_time or 0)
    rows = [f"{'submission id':<28} {'status':<10} entrypoint"]
    rows += [f"{j.submission_id or j.job_id:<28} {str(j.status.value):<10} {j.entrypoint}" for j in jobs]
    return "\n".join(rows)


def main(argv: list[str] | None = None, command: str = "submit") -> int:
    parser = argparse.ArgumentParser(prog=f"fmgnn {command}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", help=f"the cluster's dashboard address (default: {default_address()})")
    if command == "submit":
        parser.add_argument("--runtime-env", type=Path, default=RUNTIME_ENV)
        parser.add_argument("--working-dir", type=Path, default=REPO)
        parser.add_argument("--submission-id", help="a name for the job (default: Ray makes one)")
        parser.add_argument("--driver-resource", help="a resource the driver reserves one of (cluster/: "
                            "fmgnn_driver, on the head); default: none")
        parser.add_argument("--no-wait", action="store_true", help="return after submitting")
        parser.add_argument("job", nargs=argparse.REMAINDER, help="the fmgnn job and its arguments")
    elif command == "status":
        parser.add_argument("job_id", nargs="?")
    else:
        parser.add_argument("job_id")
        if command == "logs":
            parser.add_argument("--follow", action="store_true")
    args = parser.parse_args(argv)

    if command == "submit":
        job_args = args.job[1:] if args.job[:1] == ["--"] else args.job
        job_id = submit(job_args, args.address, args.runtime_env, args.working_dir, args.submission_id,
                        args.driver_resource)
        print(f"submitted {job_id}", flush=True)
        if args.no_wait:
            return 0
        final = follow(job_id, args.address)
        print(f"job {job_id}: {final}")
        return 0 if final == "SUCCEEDED" else 1
    if command == "status":
        if args.job_id:
            print(job_client(args.address).get_job_status(args.job_id).value)
        else:
            print(status_table(args.address))
        return 0
    if command == "logs":
        if args.follow:
            return 0 if follow(args.job_id, args.address) == "SUCCEEDED" else 1
        print(job_client(args.address).get_job_logs(args.job_id), end="")
        return 0
    stopped = job_client(args.address).stop_job(args.job_id)
    print(f"job {args.job_id}: {'stop requested' if stopped else 'already finished'}")
    return 0


def submit_main(argv: list[str] | None = None) -> int:
    return main(argv, "submit")


def status_main(argv: list[str] | None = None) -> int:
    return main(argv, "status")


def logs_main(argv: list[str] | None = None) -> int:
    return main(argv, "logs")


def stop_main(argv: list[str] | None = None) -> int:
    return main(argv, "stop")


if __name__ == "__main__":
    raise SystemExit(main())
