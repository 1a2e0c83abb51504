"""Registration losses: the composite training loss and fast equivalents of MONAI's MI and regularisers."""

from .composite import RegistrationLoss, inverse_consistency_error
from .mind import MINDSSCLoss, mind_ssc
from .mutual_information import SparseMutualInformationLoss
from .regularisers import BendingEnergy, Diffusion

__all__ = [
    "RegistrationLoss", "inverse_consistency_error", "SparseMutualInformationLoss", "BendingEnergy", "Diffusion", "MINDSSCLoss", "mind_ssc",
]
