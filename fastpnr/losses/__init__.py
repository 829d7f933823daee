"""Pure loss functions: tensors and floats in, a scalar tensor out. Equations in each docstring."""
from fastpnr.losses.barlow import barlow_loss
from fastpnr.losses.byol import byol_loss
from fastpnr.losses.cla import alignment_loss
from fastpnr.losses.cassle import contrastive_distill, decorrelative_distill, predictive_distill, predictive_mse_distill
from fastpnr.losses.gsg import gsg_loss, gsg_pairing
from fastpnr.losses.infonce import multi_block_infonce
from fastpnr.losses.moco import moco_loss
from fastpnr.losses.mocov3 import mocov3_loss
from fastpnr.losses.pfr import pfr_distill
from fastpnr.losses.pocon import pocon_distill
from fastpnr.losses.pnr_barlow import pnr_barlow_regularizer
from fastpnr.losses.pnr_byol import pnr_byol_regularizer
from fastpnr.losses.pnr_moco import pnr_moco_loss
from fastpnr.losses.pnr_mocov3 import pnr_mocov3_loss
from fastpnr.losses.pnr_simclr import pnr_simclr_loss
from fastpnr.losses.pnr_vicreg import pnr_vicreg_regularizer
from fastpnr.losses.simclr import simclr_loss
from fastpnr.losses.simsiam import simsiam_loss
from fastpnr.losses.vicreg import covariance_loss, invariance_loss, variance_loss, vicreg_loss

__all__ = [
    "alignment_loss",
    "barlow_loss",
    "byol_loss",
    "contrastive_distill",
    "covariance_loss",
    "decorrelative_distill",
    "gsg_loss",
    "gsg_pairing",
    "invariance_loss",
    "moco_loss",
    "mocov3_loss",
    "multi_block_infonce",
    "pfr_distill",
    "pocon_distill",
    "pnr_barlow_regularizer",
    "pnr_byol_regularizer",
    "pnr_moco_loss",
    "pnr_mocov3_loss",
    "pnr_simclr_loss",
    "pnr_vicreg_regularizer",
    "predictive_distill",
    "predictive_mse_distill",
    "simclr_loss",
    "simsiam_loss",
    "variance_loss",
    "vicreg_loss",
]
