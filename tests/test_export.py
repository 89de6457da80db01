"""Policy export: real runs trained on pendulum-medium, exported to TorchScript and ONNX, loaded in a Python that
cannot import offline_rl, and compared with the toolkit's own policy."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from offline_rl import algos
from offline_rl.algos import Algorithm
from offline_rl.cli import main
from offline_rl.data import load_dataset
from offline_rl.data.dataset import Spec
from offline_rl.errors import UserError
from offline_rl.export import export_algorithm, export_policy, read_metadata
from offline_rl.training import load_run, run_experiment

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
TOL = 1e-5
SMALL = {"td3_bc": {"actor_hidden": [64, 64], "critic_hidden": [64, 64]}, "iql": {"hidden": [64, 64]}}
"""Two algorithms with different actor heads: TD3+BC's max_action·tanh and IQL's clipped Gaussian mean."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export_runs")
    out = {}
    for name, overrides in SMALL.items():
        out[name] = root / name
        result = run_experiment(name, "pendulum-medium", seed=1, steps=200, eval_every=0, eval_episodes=1,
                                out_dir=out[name], overrides=overrides, progress=False)
        assert result["status"] == "completed"
    return out


def run_cli(*args: str) -> int:
    """Exit code of `offline-rl ARGS`, run by the CLI's own entry point (`offline_rl.cli.main`) in this process."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return int(exit_info.value.code or 0)


def main_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`run_cli` with what it printed: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = run_cli(*args)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_exit_2(result: tuple[int, str, str], *needles: str) -> None:
    code, _, err = result
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0]


def observations(n_data: int = 64) -> np.ndarray:
    """Raw observations from the dataset, plus ones far outside it (Pendulum's cos, sin in [-1, 1], θ̇ in [-8, 8])."""
    data = load_dataset("pendulum-medium").observations.numpy()
    rng = np.random.default_rng(0)
    near = data[rng.choice(len(data), n_data, replace=False)]
    far = rng.normal(0.0, 50.0, size=(16, data.shape[1]))
    corners = np.array([[1e3, -1e3, 1e3], [-1e3, 1e3, -1e3], [0.0, 0.0, 0.0]])
    return np.concatenate([near, far, corners]).astype(np.float32)


def site_dirs() -> list[str]:
    """Where torch, numpy and onnxruntime live; added to sys.path without running their .pth files, so that the
    editable install's finder (which is how offline_rl is importable here) never loads."""
    import onnxruntime

    return sorted({str(Path(m.__file__).resolve().parents[1]) for m in (torch, np, onnxruntime)})


ISOLATED = textwrap.dedent("""
    import json, sys
    sys.path.extend(json.loads(sys.argv[1]))
    try:
        import offline_rl  # noqa: F401
    except ImportError as e:
        import_error = str(e)
    else:
        raise SystemExit("offline_rl is importable: not isolated")
    import numpy as np, onnxruntime, torch
    obs = np.load("obs.npy")
    out = {"import_error": np.array(import_error)}
    for key, path in json.loads(sys.argv[2]).items():
        if path.endswith(".pt"):
            out[key] = torch.jit.load(path)(torch.from_numpy(obs)).numpy()
        else:
            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            out[key] = session.run(None, {session.get_inputs()[0].name: obs})[0]
            out[key + ":batch_dim"] = np.array(str(session.get_inputs()[0].shape[0]))
    assert not [m for m in sys.modules if m.startswith("offline_rl")]
    np.savez("actions.npz", **out)
""")


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> dict[str, Path]:
    """Both formats of both runs: td3_bc through the CLI to the default paths, iql from Python to chosen paths in
    a folder that does not exist yet."""
    files = {}
    for fmt in ("torchscript", "onnx"):
        assert run_cli("export", str(runs["td3_bc"]), "--format", fmt) == 0
    files["td3_bc/torchscript"], files["td3_bc/onnx"] = runs["td3_bc"] / "policy.pt", runs["td3_bc"] / "policy.onnx"
    out = tmp_path_factory.mktemp("exports") / "new"
    files["iql/torchscript"] = export_policy(runs["iql"], "TorchScript", out / "iql.pt")
    files["iql/onnx"] = export_policy(runs["iql"], "onnx", out / "iql.onnx")
    assert (files["iql/torchscript"], files["iql/onnx"]) == (out / "iql.pt", out / "iql.onnx")
    return files


@pytest.fixture(scope="module")
def isolated_actions(exported, tmp_path_factory) -> dict[str, np.ndarray]:
    """Actions of every exported file on `observations()`, computed by `python -I -S` in an empty folder, with only
    the site-packages of torch, numpy and onnxruntime on its path: a Python without offline_rl."""
    work = tmp_path_factory.mktemp("isolated")
    np.save(work / "obs.npy", observations())
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", ISOLATED, json.dumps(site_dirs()),
                           json.dumps({k: str(v) for k, v in exported.items()})], cwd=work, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with np.load(work / "actions.npz") as f:
        return dict(f)


def toolkit_actions(run: Path, obs: np.ndarray) -> np.ndarray:
    agent, _ = load_run(run)
    policy = agent.policy().eval()
    with torch.no_grad():
        return policy(torch.from_numpy(obs)).numpy()


def test_the_isolated_python_cannot_import_offline_rl(isolated_actions):
    assert isolated_actions["import_error"].item() == "No module named 'offline_rl'"


@pytest.mark.parametrize("name", ["td3_bc", "iql"])
def test_exported_files_act_like_the_toolkit_policy_without_offline_rl(runs, exported, isolated_actions, name):
    obs = observations()
    expected = toolkit_actions(runs[name], obs)
    assert expected.shape == (len(obs), 1)
    assert np.abs(expected).max() <= 2.0 and np.ptp(expected) > 0.1  # a real, non-constant policy in ±max_action
    for fmt in ("torchscript", "onnx"):
        np.testing.assert_allclose(isolated_actions[f"{name}/{fmt}"], expected, rtol=0, atol=TOL)
    assert not isolated_actions[f"{name}/onnx:batch_dim"].item().isdigit()  # a dynamic batch dimension
    import onnx

    model = onnx.load(str(exported[f"{name}/onnx"]))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
    for fmt in ("torchscript", "onnx"):
        path = exported[f"{name}/{fmt}"]
        assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
        meta = read_metadata(path)
        assert (meta["algo"], meta["obs_dim"], meta["act_dim"]) == (name, 3, 1)
        assert (meta["action_low"], meta["action_high"], meta["env_id"]) == ([-2.0], [2.0], "Pendulum-v1")


def test_state_normalisation_is_inside_the_exported_policy(runs, isolated_actions):
    data = load_dataset("pendulum-medium").observations.numpy().astype(np.float64)
    mean, std = data.mean(0), data.std(0) + 1e-3  # the dataset's z-score, computed here from the data
    assert np.abs(mean).max() > 0.05 and np.abs(std - 1).max() > 0.05  # not the identity
    obs = observations()
    agent, _ = load_run(runs["td3_bc"])
    with torch.no_grad():
        on_normalised = agent.actor(torch.from_numpy(((obs - mean) / std).astype(np.float32))).numpy()
        on_raw = agent.actor(torch.from_numpy(obs)).numpy()
    for fmt in ("torchscript", "onnx"):
        got = isolated_actions[f"td3_bc/{fmt}"]
        np.testing.assert_allclose(got, on_normalised, rtol=0, atol=1e-4)  # stats recomputed in float64
        assert np.abs(got - on_raw).max() > 0.05  # the actor alone, on raw observations, acts otherwise


def _with_stats(agent: Algorithm, seed: int) -> Algorithm:
    """Non-identity normalisation statistics, as after `prepare`, without a dataset."""
    if hasattr(agent, "normalizer"):
        g = torch.Generator().manual_seed(seed)
        agent.normalizer.mean.copy_(torch.randn(agent.spec.obs_dim, generator=g))
        agent.normalizer.std.copy_(torch.rand(agent.spec.obs_dim, generator=g) + 0.5)
    return agent


@pytest.mark.parametrize("name", sorted(n for n in algos.available() if algos.get(n).loop == "offline"))
def test_every_algorithm_exports_its_policy(name, tmp_path):
    """Every registered algorithm, freshly built on an asymmetric action box; ONNX for the heads the trained runs
    above do not cover (O-DICE's unsquashed Gaussian mean, SAC's scale·tanh + bias without normalisation). IQL
    with actor dropout: the export is the eval-mode policy (dropout off), whatever mode the algorithm is in."""
    spec = Spec(5, 2, (-1.0, -3.0), (2.0, 1.0))
    config = {"actor_dropout": 0.5} if name == "iql" else None
    agent = _with_stats(algos.make(name, spec, config, seed=0), seed=1)
    obs = torch.from_numpy(np.random.default_rng(2).normal(0, 5, size=(33, 5)).astype(np.float32))
    with torch.no_grad():
        expected = agent.policy().eval()(obs).numpy()
    agent.train()  # the policy shares the algorithm's modules: back to training mode, dropout on, before export
    formats = ["torchscript", "onnx"] if name in ("odice", "sac") else ["torchscript"]
    for fmt in formats:
        path = export_algorithm(agent, fmt, tmp_path / f"policy.{fmt}")
        if fmt == "torchscript":
            got = torch.jit.load(str(path))(obs).numpy()
        else:
            import onnxruntime

            got = onnxruntime.InferenceSession(str(path)).run(None, {"obs": obs.numpy()})[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)
        assert read_metadata(path)["action_low"] == [-1.0, -3.0]
    assert all(m.training for m in agent.modules())  # exporting left the algorithm's own modules alone


class _NoPolicy(Algorithm):
    name = "no_policy"


class _CallablePolicy(Algorithm):
    name = "callable_policy"

    def policy(self):
        return lambda obs: obs[:, :1]


class _DataDependent(nn.Module):
    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs[:, :1] * float(obs.mean())  # a Python number: a trace freezes it for one batch


class _UntraceablePolicy(Algorithm):
    name = "untraceable"

    def policy(self):
        return _DataDependent()


def test_a_policy_that_cannot_be_exported_is_a_user_error_naming_the_algorithm(tmp_path):
    spec = Spec(3, 1, (-1.0,), (1.0,))
    with pytest.raises(UserError, match="no_policy: has no deterministic policy"):
        export_algorithm(_NoPolicy(spec, None), "torchscript", tmp_path / "p.pt")
    with pytest.raises(UserError, match="callable_policy: cannot be exported: its policy.. returns a function"):
        export_algorithm(_CallablePolicy(spec, None), "onnx", tmp_path / "p.onnx")
    existing = tmp_path / "keep.pt"
    existing.write_bytes(b"old")
    with pytest.raises(UserError, match="untraceable: its policy cannot be exported to torchscript: .* differ"):
        export_algorithm(_UntraceablePolicy(spec, None), "torchscript", existing)
    assert existing.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.pt"]


def test_bad_input_exits_2_with_one_line(runs, tmp_path, capsys):
    run = runs["iql"]
    assert_one_line_exit_2(main_cli(capsys, "export", str(tmp_path), "--format", "onnx"), "not a run folder")
    assert_one_line_exit_2(main_cli(capsys, "export", str(run), "--format", "tourchscript"),
                           "unknown export format 'tourchscript'", "did you mean 'torchscript'")
    assert_one_line_exit_2(main_cli(capsys, "export", str(run), "--out", str(tmp_path)), "is a directory")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert_one_line_exit_2(main_cli(capsys, "export", str(run), "--format", "onnx", "--out",
                                    str(blocker / "policy.onnx")), "cannot write", "a-file is not a folder")
    assert [p.name for p in run.iterdir() if p.name.startswith("policy")] == []


def test_the_cli_prints_the_path_it_wrote(runs, tmp_path, capsys):
    code, out, _ = main_cli(capsys, "export", str(runs["iql"]), "--out", str(tmp_path / "p.pt"))
    assert code == 0 and out.strip() == str(tmp_path / "p.pt") and (tmp_path / "p.pt").stat().st_size > 0
