"""The demo's weights: which export each model comes from, loaded once, and described without server paths.

:class:`ModelStore` loads each model through :func:`clel.weights.load_pretrained` (a local folder, a Hugging Face
Hub repo id, or the bundled ``weights/<name>``) and says which one was used. :func:`make_demo_exports` writes tiny
random exports shaped like the real ones (tests, benchmarks, trying the apps before training).
"""
from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from clel.sampling import SamplingError
from clel.weights import BUNDLED_WEIGHTS
from clel_app.messages import DemoError, redact_paths, shown_path

log = logging.getLogger("clel_app.models")

# Each demo model: (environment variable naming a folder or Hub repo id, bundled default folder name).
MODEL_SPECS: dict[str, tuple[str, str]] = {
    "cifar10": ("CLEL_WEIGHTS_CIFAR10", "cifar10"),
    "celeba": ("CLEL_WEIGHTS_CELEBA", "celeba32"),
}
MODEL_LABELS: dict[str, str] = {"cifar10": "CIFAR-10", "celeba": "CelebA"}
MODEL_CHOICES: dict[str, str] = {label: kind for kind, label in MODEL_LABELS.items()}  # {"CIFAR-10": "cifar10", ...}
MODEL_CARD = "README.md"


def default_weights(kind: str) -> str:
    """Where the demo loads ``kind`` ("cifar10" or "celeba") from: the env variable, else the bundled folder."""
    if kind not in MODEL_SPECS:
        raise DemoError(f"unknown model {kind!r}; choose one of {', '.join(MODEL_SPECS)}")
    env, bundled = MODEL_SPECS[kind]
    return os.environ.get(env, "").strip() or str(BUNDLED_WEIGHTS / bundled)


def human_count(n: int) -> str:
    """12,345,678 -> "12.3 M", 45,600 -> "45.6 k", 512 -> "512"."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


_FRONT_MATTER = re.compile(r"\A---\s*\n.*?\n---\s*\n", re.S)
_IMAGE_LINE = re.compile(r"^\s*!\[([^\]]*)\]\(([^)\s]+)\)\s*$", re.M)


@dataclass
class LoadedModel:
    kind: str
    model: Any  # clel.models.CLEL, in eval mode
    cfg: Any  # clel.config.CLELConfig
    extras: dict[str, Any]
    spec: str  # what was asked for (folder or repo id)

    @property
    def path(self) -> Path:
        return Path(self.extras.get("path", self.spec))

    @property
    def source(self) -> str:
        return str(self.extras.get("source", "local"))

    @property
    def label(self) -> str:
        return MODEL_LABELS.get(self.kind, self.kind)

    @property
    def has_encoder(self) -> bool:
        """Whether the export includes the encoder h (needed to encode photos: look-alikes, interpolation, s(x))."""
        from clel.weights import MissingEncoder

        return "h" in self.extras.get("parts", ["f", "g", "h"]) and not isinstance(self.model.h, MissingEncoder)

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def iteration(self) -> int | None:
        it = self.extras.get("iteration")
        return int(it) if isinstance(it, (int, float)) else None

    @property
    def hub_url(self) -> str | None:
        """The model's Hugging Face page when it was loaded from the Hub."""
        return f"https://huggingface.co/{self.spec}" if self.source == "hub" else None

    def where(self) -> str:
        """Where the weights came from, without the server's absolute paths."""
        if self.source == "hub":
            return f"Hugging Face Hub {self.spec}"
        if self.source == "bundled":
            return (f"bundled copy (the Hub was unavailable or the repo is missing) {shown_path(self.path)}, "
                    f"not {self.spec}")
        return f"local folder {shown_path(self.path)}"

    def size(self) -> str:
        """Architecture, resolution and parameter count, e.g. "Small, 32 px, 14.2 M parameters"."""
        return (f"{str(self.cfg.arch).capitalize()}, {self.cfg.image_size} px, {human_count(self.parameters)} "
                f"parameters")

    def describe(self) -> str:
        """One line for the UI: which model, how big, how trained, from where (no absolute paths)."""
        it = self.iteration
        return (f"{self.cfg.dataset} ({self.size()}{'' if self.has_encoder else ', no encoder h'}), "
                + (f"{it:,} training iterations, " if it is not None else "") + f"from {self.where()}")

    def encoder_or_error(self, what: str) -> None:
        """Raise a :class:`DemoError` saying why ``what`` cannot run when the export has no encoder h."""
        if not self.has_encoder:
            raise DemoError(f"{what} needs the encoder h to read the photos, and the {self.label} weights were "
                            f"exported without it (their config.json lists only the networks "
                            f"{', '.join(self.extras.get('parts', ['f', 'g']))}). Choose weights that include h.")

    @property
    def buffer_images(self) -> int:
        """Images of the replay buffer shipped with the weights (the model's own long-run chains; 0: none)."""
        return int(self.extras.get("replay_buffer") or 0)

    def buffer_or_error(self) -> None:
        """Raise a :class:`DemoError` when a chain asks to start from a replay buffer these weights do not ship."""
        if not self.buffer_images:
            raise DemoError(f"the {self.label} weights ship no replay buffer (replay_buffer.safetensors beside "
                            f"them), so there are no long-run chains to continue: choose Start from: uniform "
                            f"noise, or weights that include their buffer.")

    # the model card (README.md in the export folder) -------------------------------------------------------
    def card_path(self) -> Path | None:
        p = self.path / MODEL_CARD
        return p if p.is_file() else None

    def card(self) -> tuple[str, str, list[tuple[Path, str]]]:
        """(title, markdown without front matter or image lines, [(image path, caption)]) of the model card.

        Images are returned apart so the app can serve them as image components (the markdown's relative
        links would point nowhere on the app's pages); images missing from the folder are left out.
        """
        p = self.card_path()
        if p is None:
            return self.label, "", []
        text = _FRONT_MATTER.sub("", p.read_text(encoding="utf-8", errors="replace"), count=1)
        images = [(self.path / src, alt or src) for alt, src in _IMAGE_LINE.findall(text)
                  if "://" not in src and (self.path / src).is_file()]
        body = _IMAGE_LINE.sub("", text)
        title = next((line[2:].strip() for line in body.splitlines() if line.startswith("# ")), self.label)
        return title, re.sub(r"\n{3,}", "\n\n", body).strip(), images

    # concepts stored with the weights ---------------------------------------------------------------------
    def class_names(self) -> list[str]:
        return list(self.extras.get("classes") or [])

    def class_latent(self, name: str, direction: str | None = None) -> Tensor:
        """The class's concept latent (``direction``: mean or contrast; default: the measured one for these weights,
        ``clel.sampling.default_direction``)."""
        from clel.sampling import class_latents, default_direction

        if self.extras.get("class_prototypes") is None or not self.class_names():
            raise DemoError(f"the {self.label} weights have no class prototypes; export them with "
                            f"extras={{'class_prototypes': ...}}")
        if name not in self.class_names():
            raise DemoError(f"unknown class {name!r}; choose one of {', '.join(self.class_names())}")
        try:
            return class_latents(self.extras, [name], direction or default_direction(self.extras, "class"))[0]
        except SamplingError as e:
            raise DemoError(str(e)) from None

    def attribute_names(self) -> list[str]:
        return list(self.extras.get("attributes") or [])


class ModelStore:
    """Loads each demo model once (thread-safe) and remembers failures so every request explains them."""

    def __init__(self, specs: Mapping[str, str] | None = None, device: str = "cpu"):
        self.specs = {k: (specs or {}).get(k) or default_weights(k) for k in MODEL_SPECS}
        self.device = device
        self._models: dict[str, LoadedModel] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, kind: str) -> LoadedModel:
        if kind not in self.specs:
            raise DemoError(f"unknown model {kind!r}; choose one of {', '.join(self.specs)}")
        with self._lock:
            if kind in self._models:
                return self._models[kind]
            if kind in self._errors:
                raise DemoError(self._errors[kind])
            from clel.weights import load_pretrained  # lazy: keeps `import clel_app.models` light

            spec = self.specs[kind]
            try:
                model, cfg, extras = load_pretrained(spec, device=self.device)
            except Exception as e:  # WeightsError and anything a broken export raises: report, don't crash
                env = MODEL_SPECS[kind][0]
                msg = (f"cannot load the {kind} weights from {spec}: {e}. Train and export them into this folder, "
                       f"or point {env} at an export folder or a Hugging Face repo id.")
                log.warning(msg)  # the full message, paths included, for the server's log
                self._errors[kind] = redact_paths(msg)  # what visitors see
                raise DemoError(self._errors[kind]) from None
            model.eval().requires_grad_(False)
            lm = LoadedModel(kind, model, cfg, extras, spec)
            self._models[kind] = lm
            return lm

    def status(self, kind: str) -> str:
        """"loaded: ..." or the error, without raising (for page headers)."""
        try:
            return self.get(kind).describe()
        except DemoError as e:
            return f"not available: {e}"


# ----------------------------------------------------------------------------------------------------------------
# Tiny random exports (tests, benchmarks, trying the apps before training)
# ----------------------------------------------------------------------------------------------------------------

FACE_ATTRIBUTES = ("Young", "Female", "Smiling")


def make_demo_exports(root: str | os.PathLike, preset: str = "tiny", seed: int = 0, celeba_size: int = 32,
                      reference_images: Mapping[str, Tensor] | None = None,
                      celeba_encoder: bool = True, buffer_images: int = 64) -> dict[str, Path]:
    """Randomly initialised exports shaped like the real demo weights, under ``root/cifar10`` and ``root/celeba``.

    The CIFAR-10 export carries 10 class prototypes, the CelebA one Young/Female/Smiling attribute latents (random
    unit vectors: the networks are untrained, so samples are noise; the apps' behaviour is what is exercised).
    With ``reference_images`` (uint8 sets as from :func:`clel.data.ood.reference_sets`) an ``ood_reference.safetensors``
    is written next to the CIFAR-10 weights. ``celeba_encoder=False`` leaves h out of the CelebA export (an export saved
    without it). Each folder gets a short model card (README.md) and a replay buffer of
    ``buffer_images`` smooth random images (0: none), as a trained export ships its long-run chains.
    Returns ``{"cifar10": path, "celeba": path}``.
    """
    import torch.nn.functional as F

    from clel.checkpoints import REPLAY_BUFFER_NAME, save_replay_buffer
    from clel.config import CELEBA_MEAN, CELEBA_STD, get_preset
    from clel.data import CIFAR10_CLASSES
    from clel.models import CLEL
    from clel.weights import export_pretrained

    root = Path(root)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    cfg = get_preset(preset)
    cifar = CLEL(cfg).eval()
    protos = F.normalize(torch.randn(len(CIFAR10_CLASSES), cfg.feature_dim, generator=g), dim=1)
    cifar_dir = export_pretrained(cifar, root / "cifar10", extras={"class_prototypes": protos},
                                  extra_names={"class_prototypes": list(CIFAR10_CLASSES)},
                                  info={"weights": f"random init ({preset} preset, seed {seed})"})
    ccfg = cfg.replace(dataset="celeba", image_size=celeba_size, mean=CELEBA_MEAN, std=CELEBA_STD, num_classes=0)
    celeba = CLEL(ccfg).eval()
    attrs = F.normalize(torch.randn(len(FACE_ATTRIBUTES), cfg.feature_dim, generator=g), dim=1)
    celeba_dir = export_pretrained(celeba, root / "celeba", extras={"attribute_latents": attrs},
                                   extra_names={"attribute_latents": list(FACE_ATTRIBUTES)},
                                   info={"weights": f"random init ({preset} preset, seed {seed})"},
                                   encoder=celeba_encoder)
    for folder, size in ((cifar_dir, cfg.image_size), (celeba_dir, celeba_size)):
        if buffer_images:
            blobs = F.interpolate(torch.rand(buffer_images, 3, 4, 4, generator=g), size=(size, size),
                                  mode="bilinear", align_corners=False)
            save_replay_buffer(blobs, folder / REPLAY_BUFFER_NAME)
    for folder, what in ((cifar_dir, "CIFAR-10"), (celeba_dir, f"CelebA {celeba_size}x{celeba_size}")):
        (folder / MODEL_CARD).write_text(
            f"# Random CLEL ({preset} preset) shaped like the {what} demo weights\n\n"
            f"Untrained (seed {seed}): samples are noise. Made by `clel_app.models.make_demo_exports` to try the apps "
            f"and run their tests without trained weights.\n")
    if reference_images:
        from clel.eval.ood import compute_reference, save_reference

        ref = compute_reference(cifar, reference_images)
        save_reference(ref, cifar_dir)
    return {"cifar10": cifar_dir, "celeba": celeba_dir}
