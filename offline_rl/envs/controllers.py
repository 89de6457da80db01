"""Scripted behaviour policies for the quick dataset families: no training, reliable experts.

A policy maps an observation batch (numpy, shape (n, obs_dim)) to an action batch (n, act_dim). Dataset cards
name a behaviour as a small table, e.g. `{policy = "pendulum-swingup", action_noise = 1.0, random_prob = 0.3}`,
and `make_policy` turns it into a callable.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import scipy.linalg

from offline_rl.envs import box_bounds, env_spaces
from offline_rl.errors import DatasetError

Policy = Callable[[np.ndarray], np.ndarray]

__all__ = ["Policy", "PendulumSwingUp", "InvertedDoublePendulumLQR", "RandomPolicy", "NoisyPolicy", "CONTROLLERS",
           "make_policy", "describe_behaviour"]


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
                 r: float = 1.0) -> None:
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
        action = -self.state(obs) @ self.gain.T
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


CONTROLLERS: dict[str, Callable[[str], Policy]] = {
    "pendulum-swingup": PendulumSwingUp,
    "idp-lqr": InvertedDoublePendulumLQR,
}

_BEHAVIOUR_KEYS = {"policy", "action_noise", "random_prob"}


def make_policy(behaviour: Mapping[str, Any], env_id: str, seed: int) -> Policy:
    """The behaviour policy a card describes: `{policy = "random"}` or a controller name plus optional noise."""
    unknown = set(behaviour) - _BEHAVIOUR_KEYS
    if unknown:
        raise DatasetError(f"behaviour {dict(behaviour)}: unknown keys {sorted(unknown)} "
                           f"(allowed: {sorted(_BEHAVIOUR_KEYS)})")
    name = behaviour.get("policy")
    bounds = box_bounds(env_spaces(env_id)[1])
    if bounds is None:
        raise DatasetError(f"{env_id}: only Box action spaces are supported")
    low, high = bounds
    rng = np.random.default_rng([seed, 0xB0])  # the noise stream, separate from the env seeds
    if name == "random":
        return RandomPolicy(low, high, rng)
    if name not in CONTROLLERS:
        raise DatasetError(f"behaviour policy {name!r} is unknown; known: random, {', '.join(sorted(CONTROLLERS))}")
    base = CONTROLLERS[name](env_id)
    noise, prob = float(behaviour.get("action_noise", 0.0)), float(behaviour.get("random_prob", 0.0))
    if noise == 0.0 and prob == 0.0:
        return base
    return NoisyPolicy(base, low, high, rng, noise, prob)


def describe_behaviour(behaviour: Mapping[str, Any]) -> str:
    """A one-line description, e.g. `pendulum-swingup + gaussian noise 1.0·half-range + 30% random actions`."""
    text = str(behaviour.get("policy", "?"))
    if behaviour.get("action_noise"):
        text += f" + gaussian noise {behaviour['action_noise']}·half-range"
    if behaviour.get("random_prob"):
        text += f" + {100 * float(behaviour['random_prob']):g}% random actions"
    return text
