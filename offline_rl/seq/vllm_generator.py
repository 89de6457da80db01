"""A vLLM stand-in for `HFGenerator` on a GPU machine (lazy import; vLLM itself needs a GPU).

    gen = VLLMGenerator("path/to/model", pad_id, eos_id)      # loads the same weights into a vLLM engine
    gen.sync_weights(policy)                                   # push the trained weights before each rollout

vLLM returns token lists on the host; the batch is built on the policy's device (the device `sync_weights` last
saw, or `device`), so the learner's forward pass gets tensors where the model is. The sampled tokens' log-probs
(vLLM's `logprobs=0`) come back as `Generation.logprobs` (`LossContext.rollout_logp`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from offline_rl.errors import UserError
from offline_rl.seq.policy import unwrap
from offline_rl.seq.rollout import Generation, SamplingParams, completion_mask, left_pad


class VLLMGenerator:
    def __init__(self, model_path: str, pad_id: int, eos_id: int, device: str | torch.device = "cpu",
                 engine: Any = None, vllm_module: Any = None, **engine_kwargs: Any) -> None:
        """`engine` / `vllm_module` replace `vllm.LLM(...)` / `import vllm` (a stand-in engine in tests)."""
        if vllm_module is None:
            try:
                import vllm as vllm_module
            except ImportError:
                raise UserError("the vllm generator needs `pip install vllm` (and a GPU)") from None
        self.vllm, self.pad_id, self.eos_id, self.device = vllm_module, pad_id, eos_id, torch.device(device)
        self.llm = engine if engine is not None else vllm_module.LLM(
            model=model_path, **{"gpu_memory_utilization": 0.3, **engine_kwargs})

    def sync_weights(self, model: nn.Module) -> None:
        """Load the policy's current weights into the engine's model (same process, colocated)."""
        policy = unwrap(model)
        self.device = next(policy.parameters()).device
        weights = list(policy.state_dict().items())
        if hasattr(self.llm, "apply_model"):  # recent vLLM
            self.llm.apply_model(lambda engine_model: engine_model.load_weights(weights))
        else:  # older vLLM: the driver worker's model runner
            self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)

    def generate(self, prompts: list[list[int]], n: list[int], params: SamplingParams) -> Generation:
        sampling = [self.vllm.SamplingParams(
            n=k, temperature=params.temperature, top_k=params.top_k or -1, top_p=params.top_p,
            max_tokens=params.max_new_tokens, min_tokens=params.min_new_tokens, stop_token_ids=[self.eos_id],
            logprobs=0) for k in n]
        requests = [{"prompt_token_ids": p} for p in prompts]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        repeated, completions, logprobs = [], [], []
        for p, out in zip(prompts, outputs):
            for c in out.outputs:
                repeated.append(p)
                completions.append(list(c.token_ids))
                steps = getattr(c, "logprobs", None) or []
                logprobs.append([float(d[t].logprob) for d, t in zip(steps, c.token_ids)])
        prompt_ids, prompt_mask = left_pad(repeated, self.pad_id)
        width = max(1, max(len(c) for c in completions))
        comp = torch.full((len(completions), width), self.pad_id, dtype=torch.long)
        lp = torch.zeros((len(completions), width))
        for i, (c, lps) in enumerate(zip(completions, logprobs)):
            comp[i, : len(c)] = torch.tensor(c, dtype=torch.long)
            lp[i, : len(lps)] = torch.tensor(lps)
        mask, truncated = completion_mask(comp, self.eos_id)
        has_lp = all(len(a) == len(c) for a, c in zip(logprobs, completions))
        d = self.device
        return Generation(prompt_ids.to(d), prompt_mask.to(d), comp.to(d), mask.to(d), truncated.to(d),
                          (lp * mask).to(d) if has_lp else None)
