"""Screenshot optuna-dashboard's page for a study with headless Chromium:
    python study/screenshot.py --space taskE --out docs/dashboard.png

Starts `tlstudy dashboard` on a free loopback port over the study's storage, has
Chromium render the study's page (Debian: apt-get install chromium), saves it as a
palette PNG, and stops the dashboard. For the README; not part of the tests.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

from tlstudy.cli.commands import run_cli
from tlstudy.cli.parsers import ArgumentParser
from tlstudy.errors import UserError


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_api(port, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                return json.load(r)["study_summaries"]
        except OSError:
            time.sleep(0.5)
    raise UserError(f"optuna-dashboard did not answer on port {port}: {proc.stderr.read().strip()[-300:]}")


def main(argv=None):
    p = ArgumentParser(
        prog="study/screenshot.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--space", required=True, help="the study to show (its name, as in tlstudy run)")
    p.add_argument("--results", default="results")
    p.add_argument("--storage", help="default sqlite:///RESULTS/optuna.db")
    p.add_argument(
        "--page",
        choices=("study", "trials"),
        default="study",
        help="the study's overview (history, importances, timeline) or its trial list (with the learning curves)",
    )
    p.add_argument("--trial", type=int, help="--page trials: show this trial's page (its attributes and artifacts)")
    p.add_argument("--out", default="docs/dashboard.png")
    p.add_argument("--size", default="1280,860", help="window width,height in pixels")
    p.add_argument("--chromium", default="chromium", help="the Chromium binary")
    p.add_argument("--wait-ms", type=int, default=15000, help="virtual time Chromium gives the page to render")
    args = p.parse_args(argv)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "tlstudy",
        "dashboard",
        "--space",
        args.space,
        "--results",
        args.results,
        "--port",
        str(port),
    ] + (["--storage", args.storage] if args.storage else [])
    dash = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = dash.stdout.readline()
        if "open http" not in line:
            dash.wait(timeout=30)
            raise UserError(dash.stderr.read().strip().removeprefix("error: ") or "tlstudy dashboard failed")
        wait_for_api(port, dash)
        url = line.split("open ", 1)[1].strip() + ("/trials" if args.page == "trials" else "")
        url += f"?numbers={args.trial}" if args.page == "trials" and args.trial is not None else ""
        with tempfile.TemporaryDirectory() as tmp:
            shot = Path(tmp) / "shot.png"
            try:
                # --no-sandbox: Chromium's sandbox refuses to run as root (containers, CI).
                subprocess.run(
                    [
                        args.chromium,
                        "--headless",
                        "--disable-gpu",
                        "--no-sandbox",
                        "--hide-scrollbars",
                        f"--user-data-dir={tmp}/profile",
                        f"--window-size={args.size}",
                        f"--virtual-time-budget={args.wait_ms}",
                        f"--screenshot={shot}",
                        url,
                    ],
                    capture_output=True,
                    timeout=180,
                    check=True,
                )
            except FileNotFoundError:
                raise UserError(f"no {args.chromium}: apt-get install chromium, or pass --chromium PATH") from None
            except subprocess.CalledProcessError as e:
                raise UserError(f"{args.chromium} failed: {e.stderr.decode().strip().splitlines()[-1:]}") from None
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            # A palette keeps the flat dashboard colours and makes the file several times smaller.
            Image.open(shot).convert("RGB").quantize(colors=256).save(out, optimize=True)
        print(f"{out}: {url} ({out.stat().st_size // 1024} KiB)")
    finally:
        os.kill(dash.pid, signal.SIGTERM)
        dash.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
