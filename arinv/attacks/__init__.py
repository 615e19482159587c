"""Adversarial attacks on models that take images in [0, 1]."""

from .pgd import eval_mode, fgsm, pgd
from .steps import THREAT_MODELS, L2Step, LinfStep, ThreatModel, threat_model

__all__ = ["pgd", "fgsm", "eval_mode", "threat_model", "ThreatModel", "L2Step", "LinfStep",
           "THREAT_MODELS"]
