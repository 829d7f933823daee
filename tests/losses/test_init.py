import inspect

import fastpnr.losses as losses

FIXED = {
    "simclr_loss": ["z1", "z2", "temperature", "backend"],
    "moco_loss": ["q", "k", "queue", "temperature", "backend"],
    "mocov3_loss": ["q1", "q2", "k1", "k2", "temperature", "backend"],
    "pnr_mocov3_loss": ["q1", "q2", "k1", "k2", "p1", "p2", "f1", "f2", "temperature", "distill_temperature", "backend"],
    "byol_loss": ["p", "z"],
    "simsiam_loss": ["p", "z"],
    "barlow_loss": ["z1", "z2", "lamb", "scale", "correlation"],
    "vicreg_loss": ["z1", "z2", "sim_weight", "var_weight", "cov_weight"],
    "invariance_loss": ["z1", "z2"],
    "variance_loss": ["z1", "z2"],
    "covariance_loss": ["z1", "z2"],
    "multi_block_infonce": ["anchors", "positives", "keys", "temperature", "exclude_diagonal",
                            "positive_in_denominator", "backend"],
    "pnr_simclr_loss": ["z1", "z2", "p1", "p2", "f1", "f2", "temperature", "backend"],
    "pnr_moco_loss": ["q", "k", "p", "f", "queue", "frozen_queue", "temperature", "distill_temperature", "backend"],
    "pnr_byol_regularizer": ["u1", "u2", "f1", "f2", "pos_weight", "neg_weight"],
    "pnr_barlow_regularizer": ["u1", "u2", "f1", "f2", "pos_weight", "neg_weight", "lamb", "scale"],
    "pnr_vicreg_regularizer": ["u1", "u2", "f1", "f2", "pos_weight", "neg_weight"],
    "predictive_distill": ["u1", "u2", "f1", "f2"],
    "predictive_mse_distill": ["u1", "u2", "f1", "f2"],
    "decorrelative_distill": ["u1", "u2", "f1", "f2", "lamb", "scale", "correlation"],
    "contrastive_distill": ["p1", "p2", "f1", "f2", "temperature"],
    "pfr_distill": ["p1", "p2", "f1", "f2"],
    "pocon_distill": ["p1", "p2", "t1", "t2"],
    "alignment_loss": ["kind", "u1", "u2", "f1", "f2", "temperature", "barlow_lamb", "barlow_scale", "correlation",
                       "criterion"],
    "gsg_pairing": ["z11", "z12", "z21", "z22"],
    "gsg_loss": ["p11", "p12", "p21", "p22", "z11", "z12", "z21", "z22"],
}


def test_public_names_and_arguments_are_the_fixed_contract():
    assert sorted(losses.__all__) == sorted(FIXED)
    for name, params in FIXED.items():
        sig = inspect.signature(getattr(losses, name))
        assert list(sig.parameters) == params, name
        if "backend" in params:
            assert sig.parameters["backend"].default == "torch"
    for name in ("barlow_loss", "decorrelative_distill"):  # None: C of the batch given (dist.barlow_gpus sets it)
        assert inspect.signature(getattr(losses, name)).parameters["correlation"].default is None
    sig = inspect.signature(losses.multi_block_infonce)
    assert sig.parameters["exclude_diagonal"].default is None
    assert sig.parameters["positive_in_denominator"].default is True
