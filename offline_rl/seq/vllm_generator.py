"""A vLLM stand-in for `HFGenerator` on a GPU machine (lazy import; untested here: vLLM needs a GPU).

    gen = VLLMGenerator("path/to/model", pad_id, eos_id)      # loads the same weights into a vLLM engine
    gen.sync_weights(policy)                                   # push the trained weights before each rollout
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from offline_rl.errors import UserError
from offline_rl.seq.policy import unwrap
from offline_rl.seq.rollout import Generation, SamplingParams, completion_mask, left_pad


class VLLMGenerator:
    def __init__(self, model_path: str, pad_id: int, eos_id: int, **engine_kwargs: Any) -> None:
        try:
            import vllm
        except ImportError:
            raise UserError("the vllm generator needs `pip install vllm` (and a GPU)") from None
        self.vllm, self.pad_id, self.eos_id = vllm, pad_id, eos_id
        self.llm = vllm.LLM(model=model_path, **{"gpu_memory_utilization": 0.3, **engine_kwargs})

    def sync_weights(self, model: nn.Module) -> None:
        """Load the policy's current weights into the engine's model (same process, colocated)."""
        weights = list(unwrap(model).state_dict().items())
        if hasattr(self.llm, "apply_model"):  # recent vLLM
            self.llm.apply_model(lambda engine_model: engine_model.load_weights(weights))
        else:  # older vLLM: the driver worker's model runner
            self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)

    def generate(self, prompts: list[list[int]], n: list[int], params: SamplingParams) -> Generation:
        sampling = [self.vllm.SamplingParams(
            n=k, temperature=params.temperature, top_k=params.top_k or -1, top_p=params.top_p,
            max_tokens=params.max_new_tokens, min_tokens=params.min_new_tokens, stop_token_ids=[self.eos_id])
            for k in n]
        requests = [{"prompt_token_ids": p} for p in prompts]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        repeated, completions = [], []
        for p, out in zip(prompts, outputs):
            for c in out.outputs:
                repeated.append(p)
                completions.append(list(c.token_ids))
        prompt_ids, prompt_mask = left_pad(repeated, self.pad_id)
        width = max(1, max(len(c) for c in completions))
        comp = torch.full((len(completions), width), self.pad_id, dtype=torch.long)
        for i, c in enumerate(completions):
            comp[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        mask, truncated = completion_mask(comp, self.eos_id)
        return Generation(prompt_ids, prompt_mask, comp, mask, truncated)
