"""Export a trained run's deterministic policy as a self-contained file: TorchScript or ONNX.

The exported graph is exactly `algo.policy()` in eval mode (the toolkit's own policy, the one evaluation runs):
raw observations, float32 of shape (batch, obs_dim), in; actions, float32 of shape (batch, act_dim), out. The state
normalisation, (s − μ)/σ with the dataset's statistics, is inside, so the file needs neither offline_rl nor the
dataset to act:

    torch.jit.load("policy.pt")(obs)                                      # TorchScript, needs only torch
    onnxruntime.InferenceSession("policy.onnx").run(None, {"obs": obs})[0]  # ONNX, needs only onnxruntime

Bounds of the actions are those of the algorithm's actor, not an extra clip:
  * bc, td3_bc, prdc, a2pr (and iql with `deterministic_actor`): max_action · tanh(f(s)), inside ±max_action;
  * iql: max_action · tanh(μ(s)) clipped to ±max_action; odice: max_action · μ(s) clipped to ±max_action;
  * sac: scale · tanh(μ(s)) + bias, inside the dataset's [action_low, action_high] (sac has no state
    normalisation);
where max_action is the largest absolute action bound. Evaluation additionally clips actions to the env's action
box, which only changes anything when that box is asymmetric; the bounds are in the file's metadata (`metadata`
below) for a deployment that wants the same clip.

ONNX export uses torch's `torch.export`-based exporter (opset 18, a dynamic batch dimension) and needs the
`[export]` extra (`pip install "offline-rl[export]"`: onnx, onnxscript, onnxruntime). Every export is checked
before it is written: the file's bytes are loaded back and must give the policy's actions to 1e-5 on a seeded
batch of observations. (torch 2.13 marks TorchScript deprecated but still writes and loads it; its warnings are
silenced here.)
"""

from __future__ import annotations

import copy
import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from offline_rl import __version__
from offline_rl.algos import Algorithm
from offline_rl.errors import UserError
from offline_rl.names import resolve
from offline_rl.training import load_run
from offline_rl.utils.io import atomic_write

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
"""Export formats and the suffix of their default file (RUN_DIR/policy<suffix>)."""
ONNX_OPSET = 18
"""The ONNX opset of every export (the lowest that torch's `torch.export`-based exporter writes)."""
INPUT_NAME, OUTPUT_NAME = "obs", "action"
METADATA_FILE = "offline_rl.json"
"""Name of the metadata record in a TorchScript file (`torch.jit.load(..., _extra_files=...)`); in an ONNX file
the same keys are the model's metadata_props."""
CHECK_TOLERANCE = 1e-5
CHECK_SEED = 0


def export_policy(run_dir: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    """Write the deterministic policy of the run folder `run_dir` in format `fmt` (torchscript | onnx) to `out`
    (default RUN_DIR/policy.pt or RUN_DIR/policy.onnx), atomically, and return the path written.

    Raises UserError for an unknown format, a folder that is not a run, an `out` that is a folder or cannot be
    written, a missing ONNX extra, or a policy that cannot be exported."""
    fmt = resolve(fmt, FORMATS, "export format", UserError)
    run = Path(run_dir)
    path = Path(out) if out is not None else run / f"policy{FORMATS[fmt]}"
    if path.is_dir():
        raise UserError(f"{path}: is a directory; --out takes the path of the file to write")
    agent, info = load_run(run)
    meta = {**metadata(agent), "run": str(run.resolve()), "dataset": info.get("dataset_source"),
            "env_id": info.get("env_id")}
    return export_algorithm(agent, fmt, path, meta)


def export_algorithm(agent: Algorithm, fmt: str, out: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Export `agent.policy()` (a copy on CPU, eval mode) in format `fmt` to the file `out`; see `export_policy`."""
    fmt = resolve(fmt, FORMATS, "export format", UserError)
    policy = deployable_policy(agent)
    example = check_observations(agent.spec.obs_dim)
    meta = {k: v for k, v in (meta or metadata(agent)).items() if v is not None}
    data = _EXPORTERS[fmt](policy, example, meta, agent.name)
    _check(_LOADERS[fmt](data), policy, example, f"{agent.name}: its policy cannot be exported to {fmt}")
    path = Path(out)
    try:
        atomic_write(path, lambda f: f.write(data), mode="wb")
    except OSError as e:
        blocker = next((p for p in path.parents if p.exists()), None)
        why = f"{blocker} is not a folder" if blocker is not None and not blocker.is_dir() else e.strerror or e
        raise UserError(f"{path}: cannot write the exported policy ({why})") from e
    return path


def deployable_policy(agent: Algorithm) -> nn.Module:
    """A CPU float32 copy of `agent.policy()` in eval mode (dropout off), detached from the algorithm's modules.
    UserError when the algorithm has no policy that is a torch module."""
    try:
        policy = agent.policy()
    except NotImplementedError as e:
        raise UserError(f"{agent.name}: has no deterministic policy to export (policy() is not implemented)") from e
    if not isinstance(policy, nn.Module):
        raise UserError(f"{agent.name}: cannot be exported: its policy() returns a {type(policy).__name__}, not a "
                        "torch module")
    policy = copy.deepcopy(policy).to("cpu", torch.float32).eval()
    for p in policy.parameters():
        p.requires_grad_(False)
    return policy


def metadata(agent: Algorithm) -> dict[str, Any]:
    """What a deployment needs to know about an exported policy: shapes, the action bounds, where it came from."""
    spec = agent.spec
    return {"algo": agent.name, "obs_dim": spec.obs_dim, "act_dim": spec.act_dim,
            "action_low": list(spec.action_low), "action_high": list(spec.action_high),
            "max_action": spec.max_action, "input": f"{INPUT_NAME}: float32 (batch, {spec.obs_dim}), raw observations",
            "output": f"{OUTPUT_NAME}: float32 (batch, {spec.act_dim})", "offline_rl_version": __version__}


def check_observations(obs_dim: int, batch: int = 64) -> torch.Tensor:
    """The seeded batch every export is checked on: N(0, 10²) observations, far from any data as well as near."""
    g = torch.Generator().manual_seed(CHECK_SEED)
    return 10.0 * torch.randn(batch, obs_dim, generator=g)


def _check(exported: Callable[[np.ndarray], np.ndarray], policy: nn.Module, example: torch.Tensor,
           what: str) -> None:
    """The exported file must give the policy's actions on the check batch and on batches of other sizes."""
    for obs in (example, example[:1], example[:5]):
        with torch.no_grad():
            expected = policy(obs).numpy()
        got = exported(obs.numpy())
        if got.shape != expected.shape:
            raise UserError(f"{what}: the exported file returns shape {got.shape} for a batch of {len(obs)}, the "
                            f"policy {expected.shape}")
        if not np.allclose(got, expected, rtol=CHECK_TOLERANCE, atol=CHECK_TOLERANCE):
            raise UserError(f"{what}: the exported file's actions differ from the policy's by up to "
                            f"{np.abs(got - expected).max():.3g}; its forward is not a fixed tensor graph")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata record of an exported file (either format)."""
    import zipfile

    path = Path(path)
    if not zipfile.is_zipfile(path):  # a TorchScript file is a zip archive, an ONNX file a protobuf message
        import onnx

        return {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    files = {METADATA_FILE: ""}
    with _quiet():
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return json.loads(files[METADATA_FILE])


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' deprecation warnings and log lines (torch.jit's deprecation, torchvision ops)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _torchscript_bytes(policy: nn.Module, example: torch.Tensor, meta: dict[str, Any], name: str) -> bytes:
    try:
        with _quiet():
            traced = torch.jit.trace(policy, (example,), check_trace=False)
    except Exception as e:  # an untraceable forward (e.g. Python control flow over tensors, non-tensor outputs)
        raise UserError(f"{name}: its policy cannot be exported to torchscript ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from e
    buf = io.BytesIO()
    with _quiet():
        torch.jit.save(traced, buf, _extra_files={METADATA_FILE: json.dumps(meta)})
    return buf.getvalue()


def _load_torchscript(data: bytes) -> Callable[[np.ndarray], np.ndarray]:
    with _quiet():
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")

    def run(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(obs)).numpy()

    return run


def _onnx_bytes(policy: nn.Module, example: torch.Tensor, meta: dict[str, Any], name: str) -> bytes:
    _require_onnx()
    try:
        with _quiet():
            program = torch.onnx.export(policy, (example,), None, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], opset_version=ONNX_OPSET, dynamo=True,
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    except Exception as e:
        raise UserError(f"{name}: its policy cannot be exported to onnx ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from e
    model = program.model_proto
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    return model.SerializeToString()


def _load_onnx(data: bytes) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return lambda obs: session.run(None, {INPUT_NAME: obs})[0]


def _require_onnx() -> None:
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs {', '.join(missing)}: pip install \"offline-rl[export]\"")


_EXPORTERS: dict[str, Callable[[nn.Module, torch.Tensor, dict[str, Any], str], bytes]] = {
    "torchscript": _torchscript_bytes, "onnx": _onnx_bytes}
_LOADERS: dict[str, Callable[[bytes], Callable[[np.ndarray], np.ndarray]]] = {
    "torchscript": _load_torchscript, "onnx": _load_onnx}
