"""Running the demo as a visitor meets it, for the scripts and tests that drive it from outside: a free port, the
app's own command line in a process of its own, waiting until it answers, and keeping a browser on this machine."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_server_options(parser, url_help: str, tiny_help: str = "start the server on tiny random exports") -> None:
    """The options of a harness that drives the demo: the server it starts (weights, tiny exports, threads), or
    ``--url`` of one already running."""
    parser.add_argument("--cifar10", help="CIFAR-10 weights for the server it starts (default: the bundled folder)")
    parser.add_argument("--celeba", help="CelebA weights for the server it starts (default: the bundled folder)")
    parser.add_argument("--tiny", action="store_true", help=tiny_help)
    parser.add_argument("--url", help=url_help)
    parser.add_argument("--threads", default="1", help="OMP_NUM_THREADS of the server it starts (default 1)")


def start_demo(cifar10: str | None, celeba: str | None, temp_dir: Path, log: IO[bytes], threads: str = "1",
               cwd: Path = REPO) -> tuple[str, subprocess.Popen]:
    """``python app/gradio_app.py`` on a free port (weights: the bundled folders unless given), with
    OMP_NUM_THREADS and ``temp_dir`` as its temp folder, where it keeps its own folder as it does for a user (and
    removes it when it stops); returns (url, process). Call :func:`wait_for`."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": threads, "TMPDIR": str(temp_dir)}
    env.pop("GRADIO_TEMP_DIR", None)
    cmd = [sys.executable, str(REPO / "app" / "gradio_app.py"), "--port", str(port)]
    cmd += ["--cifar10", cifar10] if cifar10 else []
    cmd += ["--celeba", celeba] if celeba else []
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    return f"http://127.0.0.1:{port}", proc


def stop_demo(proc: subprocess.Popen | None, log: IO[bytes] | None = None) -> None:
    """Stop a server of :func:`start_demo` (SIGTERM, SIGKILL after 15 s) and close its ``log``; when the server
    ended any other way than by that SIGTERM, the log's tail goes to stderr (why it failed)."""
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if log is not None:
        log.close()
        if proc is not None and proc.returncode not in (0, -15):
            sys.stderr.write(Path(log.name).read_text(errors="replace")[-3000:])


def wait_for(url: str, proc: subprocess.Popen | None, timeout: float = 300.0, path: str = "/config") -> None:
    """Until the server at ``url`` answers ``path`` (Gradio's config; Streamlit's is /_stcore/health); raises if
    ``proc`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before it answered")
        try:
            with urllib.request.urlopen(url + path, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def local_only(route) -> None:
    """Playwright route: the page may only talk to this machine; requests elsewhere (web fonts, CDNs) are aborted."""
    host = urlparse(route.request.url).hostname or ""
    if route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost", "::1"):
        route.continue_()
    else:
        route.abort()
