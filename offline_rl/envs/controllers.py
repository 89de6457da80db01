"""Behaviour policies of the generated datasets: scripted controllers, uniform random, and the zoo's SAC actors.

A policy maps an observation batch (numpy, shape (n, obs_dim)) to an action batch (n, act_dim). Dataset cards
name a behaviour as a small table, and `make_policy` turns it into a callable:

    { policy = "pendulum-swingup", action_noise = 1.0, random_prob = 0.3 }   # scripted controller + noise
    { policy = "pendulum-swingup", energy_gain = 1.0 }                      # a controller's own options
    { policy = "random" }                                                    # uniform random actions
    { policy = "zoo", level = "medium" }        # a shipped SAC actor (offline_rl.zoo) of the card's env, with
    { policy = "zoo", checkpoint = 3 }          # sampled actions; `checkpoint` indexes the ordered snapshots

A card may also name a schedule, `{ policy = "zoo", checkpoints = "up-to-medium" }`: what the zoo's SAC run
collected before it reached that level, one part after the other (`expand_behaviour`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import mujoco
import numpy as np
import scipy.linalg
import torch

from offline_rl.envs import box_bounds, env_spaces
from offline_rl.envs.lock import LockPolicy, lock_eps_greedy
from offline_rl.envs.riverswim import SwimRight
from offline_rl.errors import DatasetError, UserError

if TYPE_CHECKING:
    from offline_rl.zoo import ZooPolicy

Policy = Callable[[np.ndarray], np.ndarray]

__all__ = ["Policy", "PendulumSwingUp", "InvertedDoublePendulumLQR", "RandomPolicy", "NoisyPolicy", "ZooBehaviour",
           "CONTROLLERS", "make_policy", "expand_behaviour", "zoo_checkpoint", "describe_behaviour", "torch_threads"]


class PendulumSwingUp:
    """Expert for Pendulum-v1: energy-pumping swing-up, then a PD balancer near the top.

    Pendulum-v1 is a rod (θ = 0 upright) with θ̈ = 3g/(2l)·sin θ + 3u/(m l²), so its energy relative to resting
    upright is E = m l² θ̇²/6 + m g l/2·(cos θ − 1). Below the top (E < 0) the controller pushes along θ̇ to
    add energy; once cos θ > `switch_cos` it balances with u = −(kp θ + kd θ̇). Mean return ≈ −140.
    """

    def __init__(self, env_id: str = "Pendulum-v1", g: float = 10.0, m: float = 1.0, length: float = 1.0,
                 energy_gain: float = 10.0, kp: float = 10.0, kd: float = 2.0, switch_cos: float = 0.9) -> None:
        _, act_space = env_spaces(env_id)
        self.max_torque = float(act_space.high[0])
        self.g, self.m, self.length = g, m, length
        self.energy_gain, self.kp, self.kd, self.switch_cos = energy_gain, kp, kd, switch_cos

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        cos, sin, vel = obs[:, 0], obs[:, 1], obs[:, 2]
        theta = np.arctan2(sin, cos)
        energy = self.m * self.length**2 * vel**2 / 6.0 + self.m * self.g * self.length / 2.0 * (cos - 1.0)
        pump = self.energy_gain * (-energy) * np.where(vel >= 0.0, 1.0, -1.0)
        balance = -(self.kp * theta + self.kd * vel)
        torque = np.where(cos > self.switch_cos, balance, pump)
        return np.clip(torque, -self.max_torque, self.max_torque)[:, None].astype(np.float32)


class InvertedDoublePendulumLQR:
    """Expert for InvertedDoublePendulum-v5: discrete LQR on MuJoCo's linearisation about the upright state.

    `mujoco.mjd_transitionFD` gives the one-physics-step Jacobians (A, B). It does not support the model's RK4
    integrator, so the linearisation uses a copy of the model with the Euler integrator (same timestep); the
    env applies each action for `frame_skip` physics steps, so the env-step model is A^k, Σ_i A^i B. State:
    (x, θ1, θ2, ẋ, θ̇1, θ̇2), recovered from the observation's sines and cosines. Balances every episode for
    the full 1000 steps (return ≈ 9360).
    """

    def __init__(self, env_id: str = "InvertedDoublePendulum-v5", q: tuple[float, ...] = (1, 10, 10, 1, 1, 1),
                 r: float = 1.0, bias: float = 0.0) -> None:
        self.bias = float(bias)  # a constant force added to the LQR action (a biased, worse controller)
        env = gym.make(env_id)
        try:
            base = env.unwrapped
            model = copy.copy(base.model)
            model.opt.integrator = mujoco.mjtIntegrator.mjINT_EULER
            frame_skip = int(base.frame_skip)
            self.ctrl_low, self.ctrl_high = (float(v) for v in base.model.actuator_ctrlrange[0])
        finally:
            env.close()
        data = mujoco.MjData(model)
        data.qpos[:] = 0.0  # upright, cart centred
        data.qvel[:] = 0.0
        data.ctrl[:] = 0.0
        mujoco.mj_forward(model, data)
        nx = 2 * model.nv + model.na
        a_step, b_step = np.zeros((nx, nx)), np.zeros((nx, model.nu))
        mujoco.mjd_transitionFD(model, data, 1e-6, True, a_step, b_step, None, None)
        a_env = np.linalg.matrix_power(a_step, frame_skip)
        b_env = sum(np.linalg.matrix_power(a_step, i) @ b_step for i in range(frame_skip))
        q_mat, r_mat = np.diag(np.asarray(q, dtype=np.float64)), np.eye(model.nu) * r
        p = scipy.linalg.solve_discrete_are(a_env, b_env, q_mat, r_mat)
        self.gain = np.linalg.solve(r_mat + b_env.T @ p @ b_env, b_env.T @ p @ a_env)  # u = −K s

    @staticmethod
    def state(obs: np.ndarray) -> np.ndarray:
        """(x, θ1, θ2, ẋ, θ̇1, θ̇2) from v5 observations (x, sin θ1, sin θ2, cos θ1, cos θ2, ẋ, θ̇1, θ̇2, f)."""
        theta1 = np.arctan2(obs[:, 1], obs[:, 3])
        theta2 = np.arctan2(obs[:, 2], obs[:, 4])
        return np.stack([obs[:, 0], theta1, theta2, obs[:, 5], obs[:, 6], obs[:, 7]], axis=1)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        action = -self.state(obs) @ self.gain.T + self.bias
        return np.clip(action, self.ctrl_low, self.ctrl_high).astype(np.float32)


class RandomPolicy:
    """Uniform random actions in the action box, from its own seeded generator."""

    def __init__(self, low: np.ndarray, high: np.ndarray, rng: np.random.Generator) -> None:
        self.low, self.high, self.rng = low, high, rng

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(self.low, self.high, size=(len(obs), len(self.low))).astype(np.float32)


class NoisyPolicy:
    """A base policy degraded by zero-mean noise: good actions plus heavy noise, not a wrong controller.

    Gaussian noise of std `action_noise`·(half the action range) is added; then, with probability
    `random_prob`, the action is replaced by a uniform random one; the result is clipped to the box. The same
    number of random draws is made on every call, so the stream depends only on the seed and batch sizes.
    """

    def __init__(self, base: Policy, low: np.ndarray, high: np.ndarray, rng: np.random.Generator,
                 action_noise: float = 0.0, random_prob: float = 0.0) -> None:
        self.base, self.low, self.high, self.rng = base, low, high, rng
        self.action_noise, self.random_prob = float(action_noise), float(random_prob)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        action = np.asarray(self.base(obs), dtype=np.float64)
        n, d = action.shape
        gauss = self.rng.standard_normal((n, d))
        replace = self.rng.random(n) < self.random_prob
        uniform = self.rng.uniform(self.low, self.high, size=(n, d))
        action = action + self.action_noise * (self.high - self.low) / 2.0 * gauss
        action = np.where(replace[:, None], uniform, action)
        return np.clip(action, self.low, self.high).astype(np.float32)


class ZooBehaviour:
    """A zoo SAC actor as a batched numpy policy: actions sampled from the tanh-Gaussian with the policy's own
    seeded torch generator, one actor forward pass per call, under `torch.inference_mode`."""

    def __init__(self, policy: ZooPolicy) -> None:
        self.policy = policy

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.policy(obs)


CONTROLLERS: dict[str, Callable[..., Policy]] = {
    "pendulum-swingup": PendulumSwingUp,
    "idp-lqr": InvertedDoublePendulumLQR,
    "riverswim-swim": SwimRight,
    "lock-optimal": LockPolicy,
    "lock-eps-greedy": lock_eps_greedy,
}

_NOISE_KEYS = {"action_noise", "random_prob"}
_ZOO_KEYS = {"level", "checkpoint"}
_SCHEDULE_PREFIX = "up-to-"


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run torch on `n` intra-op threads for the duration. Behaviour-policy batches are tiny, so one thread is
    the fastest, and a fixed thread count keeps the sampled rollouts bit-identical from run to run."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _zoo_rows(env_id: str) -> list[dict[str, Any]]:
    """The zoo's ordered checkpoints of `env_id`; DatasetError when none are shipped yet."""
    from offline_rl import zoo

    if env_id not in zoo.envs():
        raise DatasetError(f"no behaviour-policy zoo weights are shipped for {env_id} yet (zoo envs: "
                           f"{', '.join(zoo.envs()) or 'none'}); train them with `python -m offline_rl.zoo.train "
                           f"--env {env_id}`")
    return zoo.checkpoints(env_id)


def _zoo_level_index(env_id: str, level: str) -> int:
    from offline_rl import zoo

    levels = zoo.manifest()[env_id].get("levels", {})
    if level not in levels:
        raise DatasetError(f"{env_id}: the zoo has no level '{level}'; levels: {', '.join(levels) or 'none'}")
    return int(levels[level])


def zoo_checkpoint(behaviour: Mapping[str, Any], env_id: str) -> dict[str, Any]:
    """The manifest row (step, file, measured returns) of the checkpoint that a `{policy = "zoo"}` behaviour
    names, with `index` (its position in step order) and the `sha256` of its weights file.

    DatasetError when `env_id` has no shipped zoo weights yet, or the level or index is unknown.
    """
    from offline_rl import zoo

    rows = _zoo_rows(env_id)
    if ("level" in behaviour) == ("checkpoint" in behaviour):
        raise DatasetError(f"behaviour {dict(behaviour)}: a zoo policy needs exactly one of 'level' (e.g. "
                           "\"medium\") or 'checkpoint' (an index into the ordered checkpoints)")
    if "level" in behaviour:
        index = _zoo_level_index(env_id, str(behaviour["level"]))
    else:
        index = behaviour["checkpoint"]
        if not isinstance(index, int) or not 0 <= index < len(rows):
            raise DatasetError(f"behaviour {dict(behaviour)}: {env_id} has {len(rows)} zoo checkpoints; "
                               f"'checkpoint' must be an index in 0..{len(rows) - 1}")
    path = zoo.WEIGHTS_DIR / rows[index]["file"]
    if not path.is_file():
        raise DatasetError(f"{path}: zoo weights missing (is the package data installed?)")
    return {**rows[index], "index": index, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _zoo_policy(behaviour: Mapping[str, Any], env_id: str, seed: int) -> ZooBehaviour:
    from offline_rl import zoo

    index = zoo_checkpoint(behaviour, env_id)["index"]
    torch_seed = int(np.random.SeedSequence([seed, 0x200]).generate_state(1, np.uint64)[0])
    try:
        policy = zoo.load_policy(env_id, index, deterministic=False,
                                 generator=torch.Generator().manual_seed(torch_seed))
    except UserError as e:
        raise DatasetError(f"{env_id}: cannot load zoo checkpoint {index}: {e}") from e
    return ZooBehaviour(policy)


def expand_behaviour(behaviour: Mapping[str, Any], env_id: str) -> list[dict[str, Any]]:
    """The behaviours that a card's behaviour rolls out, in order: itself, or for a zoo schedule
    `{policy = "zoo", checkpoints = "up-to-<level>"}` what the SAC run's replay buffer held when it reached that
    level: uniform random actions (SAC's warm-up, in place of the untrained actor at checkpoint 0), then one
    `{policy = "zoo", checkpoint = k}` per ordered checkpoint k = 1 .. level − 1 (the policy that collected the
    interval after its snapshot; noise keys are kept on each)."""
    schedule = behaviour.get("checkpoints")
    if schedule is None:
        return [dict(behaviour)]
    unknown = set(behaviour) - {"policy", "checkpoints"} - _NOISE_KEYS
    if behaviour.get("policy") != "zoo" or unknown:
        raise DatasetError(f"behaviour {dict(behaviour)}: 'checkpoints' goes with policy = \"zoo\" and the noise "
                           f"keys only")
    if not isinstance(schedule, str) or not schedule.startswith(_SCHEDULE_PREFIX):
        raise DatasetError(f"behaviour {dict(behaviour)}: 'checkpoints' must be \"{_SCHEDULE_PREFIX}<level>\", "
                           "e.g. \"up-to-medium\"")
    _zoo_rows(env_id)
    last = _zoo_level_index(env_id, schedule.removeprefix(_SCHEDULE_PREFIX))
    rest = {k: v for k, v in behaviour.items() if k != "checkpoints"}
    return [{"policy": "random"}] + [{**rest, "checkpoint": k} for k in range(1, last)]


def make_policy(behaviour: Mapping[str, Any], env_id: str, seed: int) -> Policy:
    """The behaviour policy a card describes (see the module docstring): `{policy = "random"}`, a controller
    name or `"zoo"`, plus optional noise. Random draws come from generators seeded from `seed`."""
    name = behaviour.get("policy")
    options = set(inspect.signature(CONTROLLERS[name]).parameters) - {"env_id", "rng"} if name in CONTROLLERS else set()
    allowed = {"policy"} | _NOISE_KEYS | options | (_ZOO_KEYS if name == "zoo" else set())
    unknown = set(behaviour) - allowed
    if unknown:
        hint = " (a checkpoint schedule: expand it with expand_behaviour)" if "checkpoints" in unknown else ""
        raise DatasetError(f"behaviour {dict(behaviour)}: unknown keys {sorted(unknown)} "
                           f"(allowed with policy {name!r}: {sorted(allowed)}){hint}")
    bounds = box_bounds(env_spaces(env_id)[1])
    if bounds is None:
        raise DatasetError(f"{env_id}: only Box action spaces are supported")
    low, high = bounds
    rng = np.random.default_rng([seed, 0xB0])  # the noise stream, separate from the env seeds
    if name == "random":
        return RandomPolicy(low, high, rng)
    if name == "zoo":
        base: Policy = _zoo_policy(behaviour, env_id, seed)
    elif name in CONTROLLERS:
        factory = CONTROLLERS[name]  # a controller that draws random numbers takes the seeded `rng`
        extra = {"rng": rng} if "rng" in inspect.signature(factory).parameters else {}
        base = factory(env_id, **{k: v for k, v in behaviour.items() if k in options}, **extra)
    else:
        known = ", ".join(["random", "zoo", *sorted(CONTROLLERS)])
        raise DatasetError(f"behaviour policy {name!r} is unknown; known: {known}")
    noise, prob = float(behaviour.get("action_noise", 0.0)), float(behaviour.get("random_prob", 0.0))
    if noise == 0.0 and prob == 0.0:
        return base
    return NoisyPolicy(base, low, high, rng, noise, prob)


def describe_behaviour(behaviour: Mapping[str, Any]) -> str:
    """A one-line description, e.g. `pendulum-swingup + gaussian noise 1.0·half-range + 30% random actions` or
    `zoo SAC actor, level medium, sampled actions`."""
    text = str(behaviour.get("policy", "?"))
    if text == "zoo":
        which = next((f"{key} {behaviour[key]}" for key in ("level", "checkpoint", "checkpoints") if key in behaviour),
                     "?")
        text = f"zoo SAC actor, {which}, sampled actions"
    options = {k: v for k, v in behaviour.items() if k not in {"policy", "mix", *_NOISE_KEYS, *_ZOO_KEYS, "checkpoints"}}
    if options:
        text += " (" + ", ".join(f"{k} {v}" for k, v in options.items()) + ")"
    if behaviour.get("action_noise"):
        text += f" + gaussian noise {behaviour['action_noise']}·half-range"
    if behaviour.get("random_prob"):
        text += f" + {100 * float(behaviour['random_prob']):g}% random actions"
    return text
