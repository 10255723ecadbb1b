"""The paper's evaluation of a trained CLEL model, by role (``scripts/evaluate.py`` runs them all into eval.json).

- :mod:`.fid`: FID/KID samples as resumable, shardable uint8 shards (seeded per batch, so the samples do not
  depend on how the work is split), cached Inception features, the CIFAR-10 train reference; :mod:`.metrics`
  holds FID, KID, AUROC and kNN maths (the Inception network itself, shared with the frozen encoder, is
  :mod:`clel.inception`).
- :mod:`.ood` (Table 1c): s(x) on every OOD set of :mod:`clel.data.ood`, AUROC of s(x) and of the marginal
  energy alone, and the reference score distributions shipped with the weights (``python -m clel.eval.ood``).
- :mod:`.judged`: class-conditional (Fig. 3c) and compositional (Fig. 4b) samples scored by the judges of
  :mod:`.judges`, and the encoder's kNN accuracy.
- :mod:`.report`: histograms and confusion matrices (PNG with PIL, HTML with plotly) and the markdown report;
  :mod:`.modelcard`: the model card (README.md) of an export.
- :mod:`.evaluation`: one run of every section into eval.json and eval.md (:class:`~.evaluation.EvalOptions`, whose
  fields are ``scripts/evaluate.py``'s flags).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..weights import REPO_ROOT


class EvaluationError(ValueError):
    """Bad input to an evaluation; the message names the file, name or value and what was expected."""


def default_data_root() -> Path:
    """``$CLEL_DATA``, else ``../shared/data`` next to the repository (where the offline copies live)."""
    return Path(os.environ.get("CLEL_DATA", REPO_ROOT.parent / "shared" / "data"))
