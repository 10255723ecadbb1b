"""clel: Contrastive Latent-guided Energy Learning (Lee et al., ICLR 2023)."""
from .config import PRESETS, CLELConfig, get_preset
from .energy import (class_prototypes, compositional_energy, conditional_energy, energy, joint_energy, latent,
                     marginal, mean_latent, ood_score)
from .losses import EBMLoss, NTXentLoss
from .models import CLEL, EBM, Encoder, FrozenEncoder, build_encoder, build_projection, count_parameters
from .sgld import ReplayBuffer, SGLDStep, sgld, sgld_chain

__version__ = "0.1.0"
__all__ = [
    "CLEL", "CLELConfig", "EBM", "EBMLoss", "Encoder", "FrozenEncoder", "NTXentLoss", "PRESETS", "ReplayBuffer",
    "SGLDStep", "build_encoder", "build_projection", "class_prototypes", "compositional_energy", "conditional_energy",
    "count_parameters", "energy", "get_preset", "joint_energy", "latent", "marginal", "mean_latent", "ood_score",
    "sgld", "sgld_chain",
]
