"""The baselines: GRPO, Dr.GRPO and GSPO (spec section 4)."""

from __future__ import annotations

from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method


@register_method("grpo")
def grpo() -> Method:
    """GRPO: A = (r - mean_G r) / (std_G r + 1e-4); clipped token-ratio surrogate (eps 0.2); sequence mean of
    token means. Optional k3 KL to the reference: `kl_coef` (the paper's beta = 0.04; TRL's default is 0)."""
    return Method("grpo", description="group-normalised advantages, clipped surrogate, optional k3 KL")


@register_method("dr_grpo")
def dr_grpo() -> Method:
    """Dr.GRPO: A = r - mean_G r (no std), loss sum / (B * L_max) (no length bias)."""
    return Method("dr_grpo", description="no std scaling, constant normaliser B*L_max",
                  advantage=Choice("dr_grpo"), aggregation=Choice("seq-mean-token-sum-norm"))


@register_method("gspo")
def gspo() -> Method:
    """GSPO: sequence ratio s_i = exp(mean_t log rho_t) in the GSPO-token form, clipped at 1 - 3e-4 / 1 + 4e-4
    (the GSPO paper's ranges, also verl's GSPO recipe); each rollout batch is split into four mini-batches (the
    paper's setting), so all but the first update are off-policy and the sequence ratio matters."""
    return Method("gspo", description="sequence-level importance ratio (GSPO-token form)",
                  segmenter=Choice("sequence"), ratio=Choice("segment"),
                  surrogate=Choice("clip", {"eps_low": 3e-4, "eps_high": 4e-4}), minibatches=4)
