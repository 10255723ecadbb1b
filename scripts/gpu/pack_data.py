#!/usr/bin/env python
"""Pack CIFAR-10 and the wheels the GPU image lacks into gpu_carry/, for one call of the device tool.

    python scripts/gpu/pack_data.py pack       # gpu_carry/cifar10.npz + gpu_carry/wheels/*.whl, sized to fit
    python scripts/gpu/pack_data.py check      # sizes only: tree + carry against the 64 MiB the tool sends
    python scripts/gpu/pack_data.py unpack gpu_carry/cifar10.npz /tmp/clel-data --splits train   # on the device

Lossless and compact: every CIFAR-10 JPEG in ../shared/data/cifar10 was written by one encoder, with the same
623-byte header (JFIF, quantisation and Huffman tables, the 32x32 frame, the scan header) and the same 2-byte
end marker. The pack stores those once and only each image's entropy-coded scan (about 300 of its 920 bytes), so
all 50,000 training images take about 15 MB instead of 46. ``unpack`` rebuilds byte-identical files (checked by
SHA-256) as an ImageFolder root (``DEST/cifar10/<split>/<class>/NNNN.jpg``) that ``clel.data.load_cifar10`` and
``scripts/train.py --data DEST/cifar10`` read as they read the shared copy. A file that does not share the
header is stored whole, so the format never loses an image.

The budget: the device tool sends the tracked and untracked-not-ignored files of the checkout plus the carried
paths, at most 64 MiB in all. ``pack`` measures the tree (``git ls-files``), downloads the wheels, then packs
the whole training set if it fits with ``--margin-mib`` (default 4) to spare, else a class-balanced subset (the
first N files of every class); the test split goes in only if all of it fits after the training set.

Unpacking needs only the standard library and numpy (no torch import), so it takes seconds on the device.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
MiB = 2**20
TOOL_LIMIT = 64 * MiB  # what the device tool sends at most: tree + carried paths
FORMAT = "clel-jpeg-pack"
VERSION = 1
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
EOI = b"\xff\xd9"
# Wheels for what the training path imports but the GPU image ('cuda', Python 3.12) lacks; kornia needs kornia_rs.
WHEELS = ["kornia==0.9.0", "kornia-rs==0.2.0"]
PIP_PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
                "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
                "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                "--platform", "manylinux1_x86_64"]


def default_data() -> Path:
    return Path(os.environ.get("CLEL_DATA", REPO.parent / "shared" / "data")) / "cifar10"


# ----------------------------------------------------------------------------------------------------------------
# JPEG framing
# ----------------------------------------------------------------------------------------------------------------

def jpeg_header_length(b: bytes) -> int:
    """Bytes up to and including the start-of-scan segment (SOI, APPn, DQT, SOF, DHT, SOS); 0 if not a JPEG."""
    if b[:2] != b"\xff\xd8":
        return 0
    i = 2
    while i + 4 <= len(b):
        if b[i] != 0xFF:
            return 0
        marker, length = b[i + 1], int.from_bytes(b[i + 2:i + 4], "big")
        i += 2 + length
        if marker == 0xDA:  # SOS: the entropy-coded data follows
            return i if i <= len(b) else 0
    return 0


def common_header(files_bytes: list[bytes]) -> bytes:
    """The header most files share (the first file's, in practice every file's)."""
    counts: dict[bytes, int] = {}
    for b in files_bytes[:200]:
        n = jpeg_header_length(b)
        if n:
            counts[b[:n]] = counts.get(b[:n], 0) + 1
    return max(counts, key=counts.get) if counts else b""


def split_body(b: bytes, header: bytes) -> bytes | None:
    """The part of ``b`` between the shared header and the end marker, or None when ``b`` does not share them."""
    if header and b.startswith(header) and b.endswith(EOI) and len(b) >= len(header) + len(EOI):
        return b[len(header):len(b) - len(EOI)]
    return None


# ----------------------------------------------------------------------------------------------------------------
# Scanning and sizing
# ----------------------------------------------------------------------------------------------------------------

def scan_split(root: Path, split: str) -> tuple[list[str], list[list[Path]]]:
    """Classes (sorted, must be CIFAR-10's) and their files sorted by name, as clel.data scans them."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise SystemExit(f"{split_dir}: no such folder (expected a CIFAR-10 ImageFolder root with {split}/)")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes != sorted(CIFAR10_CLASSES):
        raise SystemExit(f"{split_dir}: expected the class folders {CIFAR10_CLASSES}, found {classes}")
    files = []
    for c in classes:
        with os.scandir(split_dir / c) as it:
            names = sorted(e.name for e in it if e.is_file() and e.name.lower().endswith((".jpg", ".jpeg")))
        files.append([split_dir / c / n for n in names])
    return classes, files


def tree_bytes(repo: Path = REPO) -> tuple[int, int]:
    """(tracked, untracked-not-ignored) bytes of the checkout: what the device tool sends besides carried paths."""
    def sizes(*args: str) -> int:
        out = subprocess.run(["git", "ls-files", "-z", *args], cwd=repo, check=True, capture_output=True).stdout
        total = 0
        for name in filter(None, out.split(b"\0")):
            p = repo / os.fsdecode(name)
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        return total
    return sizes(), sizes("--others", "--exclude-standard")


def folder_bytes(path: Path, skip: set[Path] = frozenset()) -> int:
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p not in skip)


def fetch_wheels(dest: Path) -> None:
    """pip download the wheels the GPU image lacks (cp312, manylinux x86-64), unless they are there already."""
    dest.mkdir(parents=True, exist_ok=True)
    for spec in WHEELS:
        name, version = spec.split("==")
        stem = name.replace("-", "_")
        if any(dest.glob(f"{stem}-{version}-*.whl")):
            continue
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", *PIP_PLATFORM, "-d", str(dest), spec]
        print("+", " ".join(cmd), flush=True)
        r = subprocess.run(cmd)
        if r.returncode != 0:
            raise SystemExit(f"pip download {spec} failed (exit {r.returncode}); the GPU image cannot fetch it "
                             f"itself, so the training would stop at 'import kornia'")
    wheels = sorted(p.name for p in dest.glob("*.whl"))
    names = [re.split(r"-\d", w, maxsplit=1)[0].lower() for w in wheels]
    if len(set(names)) != len(names):
        raise SystemExit(f"{dest}: two versions of one package ({wheels}); pip would refuse them, keep one")


# ----------------------------------------------------------------------------------------------------------------
# Pack / unpack
# ----------------------------------------------------------------------------------------------------------------

_NUM_NAME = re.compile(r"^(\d+)\.jpg$")


def _names_as_numbers(names: list[str]) -> tuple[np.ndarray, int] | None:
    """File names NNNN.jpg of one width as (numbers, width); None for anything else."""
    nums, widths = [], set()
    for n in names:
        m = _NUM_NAME.match(n)
        if not m:
            return None
        nums.append(int(m.group(1)))
        widths.add(len(m.group(1)))
    if len(widths) != 1 or (nums and max(nums) >= 2**32):
        return None
    return np.array(nums, dtype=np.uint32), widths.pop()


def _split_cost(bodies: list[list[int]], k: int, per_image: int = 12) -> int:
    """Bytes of a split with the first k images of every class (bodies, offsets, labels, names)."""
    return sum(sum(b[:k]) + per_image * min(k, len(b)) for b in bodies)


def choose_counts(body_sizes: dict[str, list[list[int]]], budget: int) -> dict[str, int | None]:
    """Images per class to pack for each split (None: all) so that the pack fits ``budget`` bytes."""
    out: dict[str, int | None] = {}
    used = 0
    train = body_sizes.get("train")
    if train is not None:
        full = _split_cost(train, max(map(len, train)))
        if full <= budget:
            out["train"], used = None, full
        else:
            lo, hi = 0, max(map(len, train))
            while lo < hi:  # largest k that fits
                mid = (lo + hi + 1) // 2
                if _split_cost(train, mid) <= budget:
                    lo = mid
                else:
                    hi = mid - 1
            if lo == 0:
                raise SystemExit(f"no room for even one image per class (budget {budget / MiB:.1f} MiB)")
            out["train"], used = lo, _split_cost(train, lo)
    for split, bodies in body_sizes.items():
        if split == "train":
            continue
        cost = _split_cost(bodies, max(map(len, bodies)))
        if used + cost <= budget:
            out[split], used = None, used + cost
    return out


def pack(root: Path, dest: Path, splits: list[str], budget: int | None) -> dict:
    """Write the pack; return its description (also stored inside it)."""
    t0 = time.time()
    raw: dict[str, tuple[list[str], list[list[Path]], list[list[bytes]]]] = {}
    for split in splits:
        classes, files = scan_split(root, split)
        raw[split] = (classes, files, [[p.read_bytes() for p in fs] for fs in files])
    header = common_header([b for s in raw.values() for fs in s[2] for b in fs])
    body_sizes = {s: [[len(b) - len(header) - len(EOI) if split_body(b, header) is not None else len(b) + 8
                       for b in fs] for fs in v[2]] for s, v in raw.items()}
    counts = choose_counts(body_sizes, budget - 4096 if budget is not None else 1 << 62)
    arrays: dict[str, np.ndarray] = {"jpeg_header": np.frombuffer(header, dtype=np.uint8)}
    meta = {"format": FORMAT, "version": VERSION, "dataset": "cifar10", "source": str(root),
            "trailer_hex": EOI.hex(), "classes": raw[splits[0]][0], "splits": {}}
    for split, (classes, files, blobs) in raw.items():
        if split not in counts:
            print(f"{split}: left out (does not fit the budget after the splits before it)")
            continue
        k = counts[split]
        pieces, offsets, labels, whole, names = [], [0], [], [], []
        digest = hashlib.sha256()
        for label, (fs, bs) in enumerate(zip(files, blobs)):
            for p, b in list(zip(fs, bs))[:k]:
                body = split_body(b, header)
                whole.append(body is None)
                body = b if body is None else body
                pieces.append(body)
                offsets.append(offsets[-1] + len(body))
                labels.append(label)
                names.append(p.name)
                digest.update(b)
        arrays[f"{split}_data"] = np.frombuffer(b"".join(pieces), dtype=np.uint8)
        arrays[f"{split}_offsets"] = np.array(offsets, dtype=np.int64 if offsets[-1] >= 2**31 else np.int32)
        arrays[f"{split}_labels"] = np.array(labels, dtype=np.uint8)
        as_numbers = _names_as_numbers(names)
        if as_numbers is not None:
            nums, width = as_numbers
            arrays[f"{split}_numbers"] = nums.astype(np.uint16 if nums.max(initial=0) < 2**16 else np.uint32)
        else:
            width = None
            arrays[f"{split}_names"] = np.frombuffer("\n".join(names).encode(), dtype=np.uint8)
        if any(whole):
            arrays[f"{split}_whole"] = np.array(whole, dtype=bool)
        total = sum(len(f) for f in files)
        meta["splits"][split] = {"count": len(labels), "of": total, "per_class": k, "name_width": width,
                                 "whole_files": int(sum(whole)), "original_bytes": int(sum(map(len, (
                                     b for bs in blobs for b in bs[:k])))), "sha256": digest.hexdigest()}
        print(f"{split}: {len(labels)} of {total} images"
              + (f" (first {k} per class)" if k is not None else "")
              + f", {arrays[f'{split}_data'].nbytes / MiB:.2f} MiB of scans "
              f"({meta['splits'][split]['original_bytes'] / MiB:.2f} MiB as files), {sum(whole)} stored whole")
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, dest)
    print(f"wrote {dest}: {dest.stat().st_size / MiB:.2f} MiB in {time.time() - t0:.1f} s")
    return meta


def read_pack(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("meta").tobytes())
    if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
        raise SystemExit(f"{path}: not a {FORMAT} v{VERSION} file")
    return meta, arrays


def unpack(path: Path, dest: Path, splits: list[str] | None = None, per_class: int | None = None,
           verify: bool = True) -> Path:
    """Write ``dest/<dataset>/<split>/<class>/<name>``; return ``dest/<dataset>`` (the --data root)."""
    t0 = time.time()
    meta, a = read_pack(path)
    header = a["jpeg_header"].tobytes()
    trailer = bytes.fromhex(meta["trailer_hex"])
    root = dest / meta["dataset"]
    classes = meta["classes"]
    for split, info in meta["splits"].items():
        if splits is not None and split not in splits:
            continue
        data, offsets, labels = a[f"{split}_data"], a[f"{split}_offsets"].astype(np.int64), a[f"{split}_labels"]
        whole = a.get(f"{split}_whole")
        if f"{split}_numbers" in a:
            names = [f"{n:0{info['name_width']}d}.jpg" for n in a[f"{split}_numbers"].tolist()]
        else:
            names = a[f"{split}_names"].tobytes().decode().split("\n")
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        seen = [0] * len(classes)
        written = 0
        buf = data.tobytes()
        for i, name in enumerate(names):
            label = int(labels[i])
            seen[label] += 1
            body = buf[offsets[i]:offsets[i + 1]]
            b = body if whole is not None and whole[i] else header + body + trailer
            digest.update(b)
            if per_class is not None and seen[label] > per_class:
                continue
            (root / split / classes[label] / name).write_bytes(b)
            written += 1
        if verify and digest.hexdigest() != info["sha256"]:
            raise SystemExit(f"{path}: {split} does not rebuild the packed files (SHA-256 mismatch): damaged pack")
        print(f"unpacked {split}: {written} of {len(names)} images to {root / split} (SHA-256 ok) "
              f"in {time.time() - t0:.1f} s", flush=True)
    return root


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------

def report(carry: Path, pack_path: Path, margin: int) -> int:
    tracked, untracked = tree_bytes()
    carried = folder_bytes(carry)
    total = tracked + untracked + carried
    print(f"tracked tree {tracked / MiB:.2f} MiB + untracked-not-ignored {untracked / MiB:.2f} MiB "
          f"+ carried {carry.name}/ {carried / MiB:.2f} MiB (pack {folder_bytes(pack_path) / MiB:.2f}, wheels "
          f"{folder_bytes(carry / 'wheels') / MiB:.2f}) = {total / MiB:.2f} MiB of {TOOL_LIMIT / MiB:.0f} MiB; "
          f"margin {(TOOL_LIMIT - total) / MiB:.2f} MiB (want >= {margin / MiB:.0f})")
    return 0 if TOOL_LIMIT - total >= margin else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="write gpu_carry/cifar10.npz and gpu_carry/wheels/")
    pk.add_argument("--data", type=Path, default=default_data(), help="CIFAR-10 ImageFolder root")
    pk.add_argument("--carry", type=Path, default=REPO / "gpu_carry", help="the carried folder (gitignored)")
    pk.add_argument("--splits", default="train,test", help="splits to pack, in priority order (train first)")
    pk.add_argument("--margin-mib", type=float, default=4.0, help="room to leave under the tool's 64 MiB")
    pk.add_argument("--no-wheels", action="store_true", help="do not fetch the wheels")
    ck = sub.add_parser("check", help="print the sizes the device tool would send")
    ck.add_argument("--carry", type=Path, default=REPO / "gpu_carry")
    ck.add_argument("--margin-mib", type=float, default=4.0)
    up = sub.add_parser("unpack", help="rebuild the ImageFolder from a pack")
    up.add_argument("pack", type=Path)
    up.add_argument("dest", type=Path, help="writes DEST/cifar10/<split>/<class>/<file>")
    up.add_argument("--splits", default=None, help="comma-separated splits (default: all in the pack)")
    up.add_argument("--per-class", type=int, default=None, help="only the first N images of every class")
    args = p.parse_args(argv)

    if args.cmd == "unpack":
        unpack(args.pack, args.dest, args.splits.split(",") if args.splits else None, args.per_class)
        return 0
    margin = int(args.margin_mib * MiB)
    pack_path = args.carry / "cifar10.npz"
    if args.cmd == "check":
        return report(args.carry, pack_path, margin)
    args.carry.mkdir(parents=True, exist_ok=True)  # a "dir/" ignore pattern only matches an existing folder
    if args.carry.resolve().is_relative_to(REPO):
        rel = args.carry.resolve().relative_to(REPO)
        r = subprocess.run(["git", "check-ignore", "-q", str(rel / "cifar10.npz")], cwd=REPO)
        if r.returncode != 0:
            raise SystemExit(f"{rel} is not ignored by git: the tool would send it as part of the tree "
                             f"(and it must never be committed); add it to .gitignore")
    if not args.no_wheels:
        fetch_wheels(args.carry / "wheels")
    tracked, untracked = tree_bytes()
    other = folder_bytes(args.carry, skip={pack_path})
    budget = TOOL_LIMIT - tracked - untracked - other - margin
    print(f"budget for the pack: 64 MiB - tree {(tracked + untracked) / MiB:.2f} MiB - rest of "
          f"{args.carry.name}/ {other / MiB:.2f} MiB - margin {margin / MiB:.0f} MiB = {budget / MiB:.2f} MiB")
    pack(args.data, pack_path, [s for s in args.splits.split(",") if s], budget)
    return report(args.carry, pack_path, margin)


if __name__ == "__main__":
    sys.exit(main())
