"""Throughput of one GRPO iteration (generation + update): offline_rl.seq against TRL's GRPOTrainer.

Both run the identical tiny random-weight Llama (built from one config and seed), the same character vocabulary
(ours natively, TRL through the same vocabulary as a PreTrainedTokenizerFast), the same arithmetic prompts, group
size, completion length (min = max new tokens, so every completion has exactly L tokens), sampling settings,
loss (token mean per sequence, then mean; eps 0.2; no KL), AdamW and thread count. Each side runs in its own
subprocess, so its peak memory (max RSS) is its own.

    python benchmarks/seq_throughput.py [--prompts 8 --group-size 8 --max-new-tokens 16 --steps 6 --warmup 2]

Tokens per second = completion tokens of one iteration / the median iteration time (warm-up excluded), best of
--repeats fresh processes per side, the sides interleaved round by round (a shared machine's load falls on both).
The TRL part is skipped with a message when TRL is not installed. The toolkit itself never imports TRL.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def setup(args: argparse.Namespace):
    import torch

    torch.set_num_threads(args.threads)
    from offline_rl.seq.policy import build_tiny_model
    from offline_rl.seq.tasks import make_task
    from offline_rl.seq.tokenizer import CharTokenizer

    task = make_task("arithmetic", seed=0, max_operand=99)
    tok = CharTokenizer(task.alphabet)
    model = build_tiny_model(tok.vocab_size, "llama", seed=0, hidden_size=args.hidden, num_layers=args.layers)
    return task, tok, model


def run_ours(args: argparse.Namespace) -> dict:
    task, tok, model = setup(args)
    import offline_rl.seq as seq
    from offline_rl.seq import trainer

    trainer.build_policy = lambda cfg, t: (model, tok)  # the identical model object as TRL gets
    start_rss = rss_mb()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    r = seq.train(task="arithmetic", task_options={"max_operand": 99}, method="grpo", steps=args.warmup + args.steps,
                  group_size=args.group_size, prompts_per_step=args.prompts, max_new_tokens=args.max_new_tokens,
                  min_new_tokens=args.max_new_tokens, lr=args.lr, progress=False, log_every=10**9, eval_problems=1,
                  save_model=False, generator=args.generator)
    out = summary(r.step_times[args.warmup:], r.step_tokens[-1], start_rss)
    out["cpu_per_wall"] = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return out


def run_trl(args: argparse.Namespace) -> dict:
    task, tok, model = setup(args)
    import torch
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    import datasets

    problems = [task.problem(i) for i in range(args.prompts * (args.warmup + args.steps) * 2)]
    data = datasets.Dataset.from_list([{"prompt": "<bos>" + p.prompt, "answer": p.answer} for p in problems])

    lengths: list[int] = []

    def exact(prompts, completions, answer, completion_ids=None, **kw):
        lengths.extend(len(c) for c in completion_ids or [])
        return [float(c.strip() == a) for c, a in zip(completions, answer)]

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t0)

    timer = Timer()
    config = GRPOConfig(
        output_dir="/tmp/seq_bench_trl", per_device_train_batch_size=args.prompts * args.group_size,
        num_generations=args.group_size, steps_per_generation=1, num_iterations=1, max_steps=args.warmup + args.steps,
        max_completion_length=args.max_new_tokens, generation_kwargs={"min_new_tokens": args.max_new_tokens},
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, loss_type="grpo", scale_rewards="group", epsilon=0.2,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", logging_steps=10**9, report_to="none", save_strategy="no", use_cpu=True, bf16=False,
        fp16=False, disable_tqdm=True, dataloader_num_workers=0, seed=0, log_completions=False)
    trainer = GRPOTrainer(model=model, reward_funcs=exact, args=config, train_dataset=data,
                          processing_class=tok.to_hf(), callbacks=[timer])
    start_rss = rss_mb()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    trainer.train()
    cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    out = summary(timer.times[args.warmup:], args.prompts * args.group_size * args.max_new_tokens, start_rss)
    out["mean_completion_len"] = sum(lengths) / max(len(lengths), 1)
    out["step_times"] = timer.times
    out["cpu_per_wall"], out["torch_threads"] = cpu_share, torch.get_num_threads()
    return out


def summary(times: list[float], tokens_per_iter: int, start_rss: float) -> dict:
    """Median iteration time (robust to other processes on a shared machine) and peak memory."""
    median = statistics.median(times)
    return {"tokens_per_s": tokens_per_iter / median, "s_per_iter": median, "peak_rss_mb": peak_mb(),
            "rss_increase_mb": peak_mb() - start_rss, "step_times": times}


def child(args: argparse.Namespace, which: str) -> dict | None:
    """One run of one side in a fresh process (its peak memory is its own)."""
    cmd = [sys.executable, __file__, "--child", which] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                                                          if k not in ("child", "with_generate", "repeats")]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        print(f"{which} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def interleaved(sides: list[tuple[str, argparse.Namespace, str]], repeats: int) -> dict[str, dict | None]:
    """`repeats` rounds, each running every side once in turn (so a shared machine's load falls on all sides
    alike); per side the fastest round is kept (the least disturbed)."""
    best: dict[str, dict | None] = {name: None for name, _, _ in sides}
    for _ in range(repeats):
        for name, a, which in sides:
            r = child(a, which)
            if r is not None and (best[name] is None or r["tokens_per_s"] > best[name]["tokens_per_s"]):
                best[name] = r
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="rounds of fresh processes per side; the fastest is "
                   "reported")
    p.add_argument("--generator", default="fast", help="ours: fast (KV-cache sampler) or hf (generate)")
    p.add_argument("--with-generate", action="store_true", help="also time ours with HF generate")
    p.add_argument("--child", choices=["ours", "trl"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_ours(args) if args.child == "ours" else run_trl(args)))
        return
    print(f"one GRPO iteration: {args.prompts} prompts x G={args.group_size}, L={args.max_new_tokens} tokens, "
          f"tiny Llama h={args.hidden} x {args.layers} layers, {args.threads} thread(s), {args.steps} timed steps")
    sides = [(f"offline_rl.seq ({args.generator})", args, "ours")]
    if args.with_generate and args.generator != "hf":
        sides.append(("offline_rl.seq (hf)", argparse.Namespace(**{**vars(args), "generator": "hf"}), "ours"))
    try:
        import trl  # noqa: F401

        sides.append(("trl GRPOTrainer", args, "trl"))
    except ImportError:
        print("TRL is not installed: skipping the TRL comparison (pip install trl)")
    best = interleaved(sides, args.repeats)
    rows = [(name, best[name]) for name, _, _ in sides]
    print(f"{'':22}{'tokens/s':>10}{'s/iter':>9}{'peak RSS MB':>13}{'RSS increase MB':>17}{'CPU/wall':>10}")
    for name, r in rows:
        if r:
            print(f"{name:22}{r['tokens_per_s']:>10.0f}{r['s_per_iter']:>9.3f}{r['peak_rss_mb']:>13.0f}"
                  f"{r['rss_increase_mb']:>17.0f}{r['cpu_per_wall']:>10.2f}")
    if rows[-1][0].startswith("trl") and rows[0][1] and rows[-1][1]:
        o, t = rows[0][1], rows[-1][1]
        print(f"speed ratio ours/TRL: {o['tokens_per_s'] / t['tokens_per_s']:.2f}x; "
              f"peak memory ours/TRL: {o['peak_rss_mb'] / t['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
