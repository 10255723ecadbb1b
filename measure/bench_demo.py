"""How fast does the live demo answer a click? First-frame latency of the Gradio app, measured end to end.

    python measure/bench_demo.py                       # Unconditional tab, default 16 samples x 60 steps
    python measure/bench_demo.py --tab faces --frames 4
    python measure/bench_demo.py --cifar10 weights/cifar10 --celeba weights/celeba64 --out bench.json

The app is launched in this process on a free local port and driven through its HTTP API with gradio_client,
as the browser does: the clock starts when the job is submitted (the click) and each streamed update is
timestamped when it reaches the client. Reported: the first frame (the chain's starting noise, sent before
any SGLD step), the first frame after SGLD steps, seconds per SGLD step, and, with ``--full``, the whole chain.

Without weights (no ``--cifar10`` / ``--celeba``, no ``CLEL_WEIGHTS_*`` and no bundled ``weights/<name>``), a
randomly initialised export of ``--preset`` (default cifar10-base, the demo's architecture) is made in a
temporary folder: untrained, but exactly the compute of the real model.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from clel.config import CLELConfig  # noqa: E402
from clel_app.chains import ACTIVE_CHAINS  # noqa: E402
from clel_app.models import MODEL_SPECS, make_demo_exports  # noqa: E402
from clel_app.serve import free_port  # noqa: E402


def weights_for(kind: str, given: str | None, preset: str, tmp: Path) -> tuple[str, str]:
    env, bundled = MODEL_SPECS[kind]
    if given:
        return given, "given"
    if os.environ.get(env):
        return os.environ[env], f"${env}"
    if (REPO / "weights" / bundled / "config.json").is_file():
        return str(REPO / "weights" / bundled), "bundled"
    if not (tmp / "cifar10").exists():
        make_demo_exports(tmp, preset=preset, celeba_size=64)
    return str(tmp / ("cifar10" if kind == "cifar10" else "celeba")), f"random init ({preset})"


def args_for(tab: str, n: int, steps: int, sweeps: int = 1) -> tuple[list, str]:
    size, noise = CLELConfig.sgld_step_size, CLELConfig.sgld_noise
    chain = [n, steps, size, noise, 1.0, 0, False, sweeps]
    if tab == "unconditional":
        return ["CIFAR-10", n, steps, size, noise, 0, False, sweeps], "/unconditional"
    if tab == "classes":
        return ["cat", *chain], "/classes"
    if tab == "faces":
        return ["off", "AND", "AND", *chain], "/faces"
    raise SystemExit(f"--tab must be unconditional, classes or faces, not {tab!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tab", default="unconditional", help="unconditional, classes or faces")
    p.add_argument("--n", type=int, default=16, help="samples (demo default 16)")
    p.add_argument("--steps", type=int, default=60, help="SGLD steps per sweep (default 60: the speed target's "
                   "chain; the demo's default is 5 sweeps x 20)")
    p.add_argument("--sweeps", type=int, default=1, help="sweeps (default 1: one plain chain)")
    p.add_argument("--frames", type=int, default=3, help="streamed frames to wait for before cancelling")
    p.add_argument("--full", action="store_true", help="run the whole chain instead of cancelling")
    p.add_argument("--repeats", type=int, default=3, help="clicks to time (the first-frame latency is their median)")
    p.add_argument("--cifar10", help="CIFAR-10 weights folder or repo id")
    p.add_argument("--celeba", help="CelebA weights folder or repo id")
    p.add_argument("--preset", default="cifar10-base", help="architecture of the random export when no weights")
    p.add_argument("--out", help="also write the results as JSON here")
    return p


def click(client, a: argparse.Namespace, r: int) -> dict:
    """One click on Sample: when each streamed frame arrived, then a cancel (or the whole chain with --full)."""
    args, endpoint = args_for(a.tab, a.n, a.steps, a.sweeps)
    t_click = time.perf_counter()
    job = client.submit(*args, api_name=endpoint)
    stamps, steps_seen = [], []
    for out in job:
        stamps.append(time.perf_counter() - t_click)
        steps_seen.append(int(out[3].split("step ")[1].split("/")[0]))
        if not a.full and len(stamps) >= a.frames:
            try:
                job.cancel()  # the server answers once the SGLD step in progress is done
            except Exception as e:  # e.g. the client's 5 s HTTP timeout during a slow step
                print(f"cancel: {type(e).__name__} (the chain still stops after its current step)",
                      file=sys.stderr)
            break
    deadline = time.monotonic() + 120
    while ACTIVE_CHAINS and time.monotonic() < deadline:
        time.sleep(0.05)
    per_step = ((stamps[-1] - stamps[1]) / (steps_seen[-1] - steps_seen[1])
                if len(stamps) > 2 and steps_seen[-1] > steps_seen[1] else None)
    run = {"first_frame_s": stamps[0], "first_sgld_frame_s": stamps[1] if len(stamps) > 1 else None,
           "first_sgld_frame_step": steps_seen[1] if len(steps_seen) > 1 else None,
           "seconds_per_step": per_step, "frames": len(stamps), "last_step": steps_seen[-1], "total_s": stamps[-1]}
    print(f"run {r + 1}: first frame {stamps[0]:.3f} s; first SGLD frame "
          f"{run['first_sgld_frame_s'] or float('nan'):.2f} s (step {run['first_sgld_frame_step']}); "
          f"{per_step or float('nan'):.2f} s/step; {len(stamps)} frames, last step {steps_seen[-1]}",
          file=sys.stderr)
    return run


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from gradio_client import Client

    from clel_app import gradio_app

    tmp = Path(tempfile.mkdtemp(prefix="clel-bench-"))
    cifar, cifar_src = weights_for("cifar10", a.cifar10, a.preset, tmp)
    celeba, celeba_src = weights_for("celeba", a.celeba, a.preset, tmp)
    t0 = time.perf_counter()
    demo = gradio_app.build_app(cifar, celeba)
    build_s = time.perf_counter() - t0
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    client = Client(url, verbose=False)
    lm = demo.clel_app.store.get("celeba" if a.tab == "faces" else "cifar10")
    runs = [click(client, a, r) for r in range(a.repeats)]

    def med(key):
        vals = [r[key] for r in runs if r[key] is not None]
        return statistics.median(vals) if vals else None

    result = {
        "tab": a.tab, "samples": a.n, "steps": a.steps,
        "weights": {"cifar10": cifar_src, "celeba": celeba_src},
        "model": f"{lm.cfg.dataset} {lm.cfg.arch} {lm.cfg.image_size}px",
        "first_frame_s_median": med("first_frame_s"),
        "first_sgld_frame_s_median": med("first_sgld_frame_s"),
        "seconds_per_step_median": med("seconds_per_step"),
        "app_build_s": build_s, "runs": runs,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_avg_1m": os.getloadavg()[0], "python": platform.python_version(),
                    "torch": torch.__version__},
    }
    print(json.dumps(result, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    client.close() if hasattr(client, "close") else None
    demo.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
