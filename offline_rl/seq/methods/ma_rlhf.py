"""MA-RLHF: macro actions (Chai et al., ICLR 2025, arXiv 2410.02743; code ernie-research/MA-RLHF).

Segmentation (P10): `fixed` n-grams, `randomized` n-grams from {1, 2, 3, 5, 10} x repeat_times, or `ppl`
(boundaries where the reference perplexity rises). In the GRPO setting the outcome advantage is constant within a
sequence, so macro actions change only the importance-sampling and clipping granularity (P7):
    rho_tau = exp(mean_{t in tau} log rho_t)           ("segment", GSPO-style; default)
    rho_tau = prod_{t in tau} rho_t                   ("product", the paper's macro ratio)
The official code instead gives every token its own rho_t with the macro's advantage, which with an outcome
advantage is token-level PPO: `--set ratio=token`. Macro GAE needs a critic and is not part of this backend.
n = 1 is token-level PPO; n >= L is GSPO.
"""

from __future__ import annotations

from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method


@register_method("ma_rlhf")
def ma_rlhf() -> Method:
    """Fixed n-grams with n = 5. UNVERIFIED: n ~ 5 as the paper's best value."""
    return Method("ma_rlhf", description="macro-action (n-gram / randomized / perplexity) segment ratios",
                  segmenter=Choice("fixed", {"n": 5}), ratio=Choice("segment"))
