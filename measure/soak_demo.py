"""Does the live demo hold its memory over many chains? A soak of the Gradio app through gradio_client.

    python measure/soak_demo.py                                  # bundled weights, 200 chains, a server of its own
    python measure/soak_demo.py --tiny --chains 60               # tiny random exports: fast chains
    python measure/soak_demo.py --url http://127.0.0.1:7860 --pid 1234   # a server that is already running
    python measure/soak_demo.py --out soak.json

Unless ``--url`` names a running server, ``python app/gradio_app.py --port N`` is started in a subprocess
(``OMP_NUM_THREADS=1``, its temporary files in a folder of this run, removed at the end). The chains cycle
through the tabs: Unconditional (CIFAR-10 and CelebA), Classes, Faces, Look-alikes and Interpolate (both on
CIFAR-10, the weights with an encoder), each short (``--min-steps`` to ``--max-steps`` SGLD steps, 2 to
``--max-n`` samples, 1 or 2 sweeps, a new seed each time). A new client (a new browser session for the
server) is opened every ``--chains-per-client`` chains. After every chain the server's resident memory is read
from /proc/PID/status (VmRSS), with the number and size of the files in its temporary folder.

Reported as JSON: the RSS after chain ``--baseline`` (20) and after the last chain, their ratio, the largest
RSS, the temporary files, and the whole curve. The exit status is 1 when the last RSS is more than
``--tolerance`` (10 %) above the baseline, or when a chain did not end with samples.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from clel.config import CLELConfig as SPEC  # SPEC's chain constants are the config's defaults
from clel_app.serve import add_server_options, start_demo, stop_demo, wait_for

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
EX = REPO / "app" / "examples"
CLASSES = ("cat", "ship", "horse", "airplane", "dog", "truck")
FACES = (("AND", "off", "AND"), ("AND", "AND", "AND"), ("off", "NOT", "AND"), ("NOT", "off", "NOT"))
TABS = ("unconditional", "classes", "faces", "lookalikes", "interpolate", "unconditional-celeba")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def folder_usage(folder: Path | None) -> tuple[int, int]:
    """(files, bytes) under ``folder``; (0, 0) when it is not given or gone."""
    if folder is None or not folder.is_dir():
        return 0, 0
    n = size = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                size += os.path.getsize(os.path.join(root, name))
                n += 1
            except OSError:
                pass
    return n, size


def chain_args(i: int, a: argparse.Namespace, handle_file) -> tuple[str, list]:
    """The i-th chain of the soak: its endpoint and arguments (short, varied, a new seed each time)."""
    tab = TABS[i % len(TABS)]
    span = a.max_steps - a.min_steps + 1
    steps = a.min_steps + (i * 7) % span
    n = 2 + (i * 5) % (a.max_n - 1)
    sweeps = 1 + (i // len(TABS)) % 2
    seed = 1000 + i
    chain = [n, steps, SPEC.sgld_step_size, SPEC.sgld_noise, 1.0, seed, False, sweeps]
    if tab == "unconditional":
        return "/unconditional", ["CIFAR-10", n, steps, SPEC.sgld_step_size, SPEC.sgld_noise, seed, False, sweeps]
    if tab == "unconditional-celeba":
        return "/unconditional", ["CelebA", n, steps, SPEC.sgld_step_size, SPEC.sgld_noise, seed, False,
                                sweeps]
    if tab == "classes":
        return "/classes", [CLASSES[i % len(CLASSES)], *chain]
    if tab == "faces":
        return "/faces", [*FACES[i % len(FACES)], *chain]
    cifar = sorted(EX.glob("cifar10_*.jpg"))
    if tab == "lookalikes":
        picks = [cifar[i % len(cifar)], cifar[(i + 1) % len(cifar)]][: 1 + i % 2]
        return "/lookalikes", [[handle_file(str(p)) for p in picks], "CIFAR-10", *chain]
    a_, b_ = cifar[i % len(cifar)], cifar[(i + 2) % len(cifar)]
    return "/interpolate", [handle_file(str(a_)), handle_file(str(b_)), "CIFAR-10", *chain]


def run_chain(client, endpoint: str, args: list) -> tuple[int, str]:
    """Submit one chain and read it to the end: (frames received, the last status line)."""
    job = client.submit(*args, api_name=endpoint)
    frames, status = 0, ""
    for out in job:
        frames += 1
        status = out[3] if isinstance(out[3], str) else status
    job.result()  # raises if the chain failed
    return frames, status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chains", type=int, default=200)
    p.add_argument("--baseline", type=int, default=20, help="the chain whose RSS the last one is compared with")
    p.add_argument("--tolerance", type=float, default=0.10, help="allowed growth of RSS over the baseline")
    p.add_argument("--min-steps", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=10)
    p.add_argument("--max-n", type=int, default=6, help="samples per chain: 2 to this")
    p.add_argument("--chains-per-client", type=int, default=10, help="chains before a new client (session)")
    add_server_options(p, url_help="a running demo server; give its --pid to sample its memory",
                       tiny_help="start the server on tiny random exports (fast chains)")
    p.add_argument("--pid", type=int, help="process id of the server at --url")
    p.add_argument("--temp-dir", help="with --url: the server's temporary folder to watch (GRADIO_TEMP_DIR)")
    p.add_argument("--out", help="also write the JSON here")
    return p


def start_server(a: argparse.Namespace, work: Path) -> tuple[str, int, Path, dict, subprocess.Popen, Any]:
    """Start a demo server (OMP_NUM_THREADS, private temp folders): (url, pid, watched folder, weights, process,
    log file)."""
    cifar, celeba = a.cifar10, a.celeba
    if a.tiny:
        from clel_app.models import make_demo_exports

        paths = make_demo_exports(work / "weights")
        cifar, celeba = str(paths["cifar10"]), str(paths["celeba"])
    weights = {"cifar10": "tiny random export" if a.tiny else (cifar or "weights/cifar10 (bundled)"),
               "celeba": "tiny random export" if a.tiny else (celeba or "weights/celeba32 (bundled)")}
    watched = work / "tmp"
    watched.mkdir()
    log = open(work / "server.log", "wb")
    url, proc = start_demo(cifar, celeba, watched, log, a.threads)
    return url, proc.pid, watched, weights, proc, log


def soak(a: argparse.Namespace, url: str, pid: int, watched: Path | None) -> tuple[list, list, list]:
    """Run the chains (a new client, i.e. session, every --chains-per-client); RSS and temp files after each."""
    from gradio_client import Client, handle_file

    curve, files, failures = [], [], []
    client = None
    for i in range(a.chains):
        if client is None or i % a.chains_per_client == 0:
            if client is not None and hasattr(client, "close"):
                client.close()
            client = Client(url, verbose=False, download_files=False)
        endpoint, args = chain_args(i, a, handle_file)
        tc = time.perf_counter()
        try:
            n_frames, status = run_chain(client, endpoint, args)
            if not status.startswith("**Done**"):
                failures.append({"chain": i + 1, "endpoint": endpoint, "status": status[:200]})
        except Exception as e:  # keep soaking; the failure is reported
            failures.append({"chain": i + 1, "endpoint": endpoint, "error": f"{type(e).__name__}: {e}"[:300]})
            n_frames = 0
        curve.append(round(rss_mb(pid), 1))
        nf, nb = folder_usage(watched)
        files.append([nf, nb])
        print(f"chain {i + 1:3d} {endpoint:15s} {n_frames:2d} frames {time.perf_counter() - tc:5.2f} s  "
              f"RSS {curve[-1]:7.1f} MiB  temp files {nf} ({nb / 2**20:.1f} MiB)", file=sys.stderr)
    if client is not None and hasattr(client, "close"):
        client.close()
    return curve, files, failures


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if a.max_steps < a.min_steps or a.max_n < 2 or a.chains < a.baseline:
        p.error("need --min-steps <= --max-steps, --max-n >= 2 and --chains >= --baseline")
    if a.url and not a.pid:
        p.error("--url needs --pid (the server's process id) to read its memory")

    work = Path(tempfile.mkdtemp(prefix="clel-soak-"))
    proc = None
    log = None
    try:
        if a.url:
            url, pid, watched = a.url.rstrip("/"), a.pid, Path(a.temp_dir) if a.temp_dir else None
            weights = {"cifar10": "as served", "celeba": "as served"}
        else:
            url, pid, watched, weights, proc, log = start_server(a, work)
        wait_for(url, proc)
        start_rss = rss_mb(pid)
        t0 = time.perf_counter()
        curve, files, failures = soak(a, url, pid, watched)
        base, last = curve[a.baseline - 1], curve[-1]
        ratio = last / base
        result = {
            "date": datetime.date.today().isoformat(),
            "chains": a.chains, "baseline_chain": a.baseline,
            "rss_mb_at_start": round(start_rss, 1),
            "rss_mb_after_baseline": base, "rss_mb_after_last": last, "ratio": round(ratio, 4),
            "rss_mb_max": max(curve), "tolerance": a.tolerance, "passed": ratio <= 1 + a.tolerance and not failures,
            "temp_files_after_baseline": files[a.baseline - 1], "temp_files_after_last": files[-1],
            "failures": failures, "seconds": round(time.perf_counter() - t0, 1),
            "settings": {"steps": [a.min_steps, a.max_steps], "samples": [2, a.max_n], "sweeps": [1, 2],
                         "chains_per_client": a.chains_per_client, "server_threads": a.threads,
                         "tabs": list(TABS)},
            "weights": weights,
            "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                        "python": platform.python_version()},
            "rss_mb_curve": curve, "temp_files_curve": files,
        }
        text = json.dumps(result, indent=2)
        print(text)
        if a.out:
            Path(a.out).write_text(text + "\n")
        print(f"RSS after chain {a.baseline}: {base:.1f} MiB, after chain {a.chains}: {last:.1f} MiB "
              f"(x{ratio:.3f}); {len(failures)} failed chains", file=sys.stderr)
        return 0 if result["passed"] else 1
    finally:
        stop_demo(proc, log)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
