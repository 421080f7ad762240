"""Policies from outside peergrid: your own code, at three levels, as ordinary
:class:`agents.policy.Policy` objects, so that ``evaluate.py``, the leaderboard and
``agents.evaluation.evaluate_policy`` score them exactly as the shipped ones.

=================  ==========================================================================
level              what you write                            spec (``evaluate.py --policies``)
=================  ==========================================================================
PettingZoo         a callable ``policy(observations) ->       ``my_pkg.my_mod:MyRule`` or
                   actions`` on one community: ``{agent:      ``path/to/my_rule.py:MyRule``,
                   obs}`` in, ``{agent: action}`` out, as     ``[:key=value...]``
                   the PettingZoo env (``envs.make_env``)
                   takes them
batched            an object with ``act(obs)`` or             the same (told apart by ``act``)
                   ``act(obs, env)``: ``obs [B, N, obs_dim]``
                   tensor in, ``[B, N, 2]`` (continuous) or
                   ``[B, N]`` (discrete) actions out;
                   optional ``reset(env, seed)``, ``mechanism``
stable-baselines3  a model trained on ``envs.make_vec_env``,  ``sb3:path/to/model.zip`` or
                   saved with ``model.save``                  ``sb3:ppo:path/to/model.zip``
=================  ==========================================================================

Spec. ``target:attribute[:key=value...]``: ``target`` is a module importable from the current
folder or ``PYTHONPATH`` (``my_pkg.my_mod``) or a Python file (a path ending in ``.py``);
``attribute`` is a class, a function or any object in it. A class is instantiated with the
``key=value`` options as keyword arguments (values read as YAML scalars, as the built-in
rules' options: ``fixed_price:price_fraction=0.7``); a function gets them as keyword arguments
on every call. The object is then a *batched* policy if it has an ``act`` method, else a
*PettingZoo-level* policy if it is callable. Its name in tables is the spec.

PettingZoo level (:class:`PettingZooPolicy`). Each step, for each environment of the batch in
turn, the policy is called with that community's observations exactly as the PettingZoo
env gives them (a dict keyed by ``prosumer_0`` ... ``prosumer_{N-1}`` of float32 arrays
``(obs_dim,)``, ``envs.observations``; the values of its ``engine="torch"``, which the numba
engine's match to float32 rounding) and returns a dict of every agent's action in the
PettingZoo action space: continuous ``[battery fraction in [-1, 1], price fraction in
[0, 1]]``, discrete an index; the PettingZoo env's own checks apply (its
``_action_batch``: every agent, real numbers, the space's shape), then the space's bounds.
A policy whose signature has a parameter named ``infos`` (``policy(observations, infos)``)
also gets each community's infos as the PettingZoo env gives them beside those observations:
its ``reset()`` infos at the start of an episode (NaN but ``day`` and ``step_of_day = -1``),
else the infos its last ``step()`` returned (one dict of ``envs.info_schema.INFO_KEYS`` per
agent; read from the core's ``last_info``). Each environment of the batch gets its own
``copy.deepcopy`` of the policy at the start of every batch of episodes, so a policy that
keeps state between steps sees one community's episode, as in the PettingZoo env; its
``reset()`` (no argument), if it has one, is called then.

Batched level (:class:`BatchedPolicy`): the policy's ``act`` gets the core's observation
tensor (and the core, if ``act`` takes a second argument); its actions are checked for the
shape above; the core checks their range and names the first bad agent.

stable-baselines3 (:class:`SB3Policy`): the model (trained without ``VecNormalize``, whose
statistics are not in the model file) is loaded with its own class's ``load``
(PPO, A2C, SAC, TD3, DDPG or DQN: told from the saved data, or named in the spec), its
observation and action spaces must equal those of ``envs.make_vec_env`` for the evaluated
config (``envs.sb3_vec_env``: parameter sharing, so any number of agents), and it acts
deterministically on the ``[B * N, obs_dim]`` local observations, its symmetric
``Box(-1, 1, (2,))`` actions mapped as the VecEnv maps them (price ``(a + 1) / 2``).

Errors. A spec that cannot be turned into a policy (a module that does not import, a missing
attribute, an object that is neither callable nor has ``act``, constructor arguments it does
not take, an unreadable model file) raises :class:`agents.policy.PolicyLoadError` naming what
was expected; a policy that does not fit the evaluated env (a model trained on another
observation layout or action space) raises ``ConfigError`` in ``reset``; wrong actions (shape,
agents, bounds) raise ``ValueError`` naming the policy and what was expected, before the env
steps. ``evaluate.py`` reports any of them, and any exception raised inside the policy, as
``policy <spec> failed: ...`` and goes on with the other policies.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agents.actions import symmetric_to_env
from agents.policy import Policy, PolicyLoadError
from envs.config import ConfigError, env_config

__all__ = ["SB3_ALGORITHMS", "BatchedPolicy", "PettingZooPolicy", "SB3Policy",
           "detect_sb3_algorithm", "file_sha256", "is_external_spec", "load_external_policy",
           "spec_source_file", "wrap_policy"]

SB3_PREFIX = "sb3"
"""First field of a stable-baselines3 spec: ``sb3:[algo:]path.zip``."""

SB3_ALGORITHMS: tuple[str, ...] = ("a2c", "ddpg", "dqn", "ppo", "sac", "td3")
"""stable-baselines3 classes a model file may be loaded with (lower-case names)."""


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


def is_external_spec(spec: str) -> bool:
    """Whether ``spec`` names a policy from outside peergrid: ``sb3:...`` or
    ``target:attribute[:key=value...]`` (the second field is not ``key=value``, which tells it
    from a built-in rule's options such as ``fixed_price:price_fraction=0.7``; a built-in
    rule's name is never a target, so ``fixed_price:0.7`` stays a built-in's bad option)."""
    from agents.baselines import BASELINES

    fields = [field.strip() for field in spec.split(":")]
    if len(fields) < 2 or fields[0] in BASELINES:
        return False
    return fields[0] == SB3_PREFIX or "=" not in fields[1]


def spec_source_file(spec: str) -> Path | None:
    """The file an external spec reads (the model ``.zip`` or the ``.py`` file), or None (a
    module spec): what a cached score of it depends on besides the spec."""
    fields = [field.strip() for field in spec.split(":")]
    if fields[0] == SB3_PREFIX:
        return Path(fields[-1])
    return Path(fields[0]) if _is_file_target(fields[0]) else None


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def load_external_policy(spec: str) -> Policy:
    """The :class:`~agents.policy.Policy` of an external ``spec`` (module docstring);
    raises :class:`~agents.policy.PolicyLoadError` naming what was expected."""
    spec = spec.strip()
    fields = [field.strip() for field in spec.split(":")]
    if fields[0] == SB3_PREFIX:
        return _load_sb3(spec, fields[1:])
    from agents.baselines import _parse_spec

    target = fields[0]
    try:
        attribute, kwargs = _parse_spec(":".join(fields[1:]))
    except ValueError as error:
        raise PolicyLoadError(f"{error}; expected target:attribute[:key=value...]") from None
    if not target or not attribute:
        raise PolicyLoadError(f"policy '{spec}': expected module.path:Attribute or "
                              f"path/to/file.py:Attribute[:key=value...]")
    module = _import_target(spec, target)
    if not hasattr(module, attribute):
        defined = sorted(name for name, value in vars(module).items()
                         if not name.startswith("_") and callable(value)
                         and getattr(value, "__module__", None) == module.__name__)
        raise PolicyLoadError(f"policy '{spec}': {target} has no attribute {attribute!r}; "
                              f"it defines {defined or 'no class or function'}")
    obj = _construct(spec, getattr(module, attribute), kwargs)
    return wrap_policy(obj, name=spec)


def wrap_policy(obj: Any, name: str) -> Policy:
    """``obj`` as a :class:`~agents.policy.Policy`: :class:`BatchedPolicy` when it has an
    ``act`` method, :class:`PettingZooPolicy` when it is callable, else PolicyLoadError."""
    if callable(getattr(obj, "act", None)):
        return BatchedPolicy(obj, name)
    if callable(obj):
        return PettingZooPolicy(obj, name)
    raise PolicyLoadError(
        f"policy '{name}': got {_describe(obj)}, which is neither callable nor has an act "
        f"method; expected a callable observations -> actions dict (PettingZoo level) or an "
        f"object with act(obs) / act(obs, env) on [B, N, obs_dim] tensors (batched level)")


@contextlib.contextmanager
def _current_folder_importable() -> Iterator[None]:
    """Imports also find modules in the current folder (as ``python -m`` would)."""
    folder = os.getcwd()
    added = folder not in sys.path and "" not in sys.path
    if added:
        sys.path.append(folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _import_target(spec: str, target: str) -> Any:
    """The module named by ``target``: a Python file or an importable module."""
    try:
        if _is_file_target(target):
            path = Path(target)
            if not path.is_file():
                raise PolicyLoadError(f"policy '{spec}': no Python file at '{path}'")
            name = "peergrid_policy_" + "".join(c if c.isalnum() else "_"
                                                for c in str(path.resolve()))
            if name in sys.modules:
                return sys.modules[name]
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or module_spec.loader is None:
                raise PolicyLoadError(f"policy '{spec}': '{path}' is not a Python module")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module  # dataclasses and pickle look their module up
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            return module
        with _current_folder_importable():
            return importlib.import_module(target)
    except PolicyLoadError:
        raise
    except ModuleNotFoundError as error:
        if _is_file_target(target) or not (error.name and (
                target == error.name or target.startswith(error.name + "."))):
            raise PolicyLoadError(  # the user's module imports something missing
                f"policy '{spec}': importing {target!r} failed: ModuleNotFoundError: "
                f"{error}{_where(error)}") from None
        raise PolicyLoadError(
            f"policy '{spec}': cannot import {target!r}: {error}; expected a module importable "
            f"from the current folder or PYTHONPATH (my_package.my_module) or a file "
            f"(path/to/my_policy.py)") from None
    except Exception as error:  # the user's module raised while importing
        raise PolicyLoadError(f"policy '{spec}': importing {target!r} failed: "
                              f"{type(error).__name__}: {error}{_where(error)}") from None


def _check_arguments(spec: str, obj: Any, kwargs: dict[str, Any], partial: bool) -> None:
    """PolicyLoadError unless ``obj``'s signature takes ``kwargs`` (all of its required
    arguments too, unless ``partial``); objects without a signature (builtins) pass."""
    try:
        signature = inspect.signature(obj)
    except ValueError:  # no signature (a builtin): let the call tell
        return
    try:
        (signature.bind_partial if partial else signature.bind)(**kwargs)
    except TypeError as error:
        raise PolicyLoadError(f"policy '{spec}': {obj.__name__} does not take the "
                              f"arguments {kwargs}: {error}") from None


def _construct(spec: str, obj: Any, kwargs: dict[str, Any]) -> Any:
    """A class instantiated with ``kwargs``; a function with ``kwargs`` bound on each call;
    any other object as it is (then ``kwargs`` must be empty)."""
    if inspect.isclass(obj):
        _check_arguments(spec, obj, kwargs, partial=False)
        try:
            return obj(**kwargs)
        except Exception as error:
            raise PolicyLoadError(f"policy '{spec}': {obj.__name__}(**{kwargs}) failed: "
                                  f"{type(error).__name__}: {error}{_where(error)}") from None
    if not kwargs:
        return obj
    if inspect.isfunction(obj):
        _check_arguments(spec, obj, kwargs, partial=True)
        return _BoundFunction(obj, kwargs)
    raise PolicyLoadError(f"policy '{spec}': options {kwargs} given, but {_describe(obj)} is "
                          f"neither a class nor a function")


class _BoundFunction:
    """A function with keyword options bound (``functools.partial`` that ``copy`` keeps)."""

    def __init__(self, function: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        self.function, self.kwargs = function, kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **self.kwargs, **kwargs)


def _takes_infos(policy: Callable[..., Any]) -> bool:
    """Whether a PettingZoo-level policy takes the infos: its signature (a bound function's
    own) has a parameter named ``infos``."""
    function = policy.function if isinstance(policy, _BoundFunction) else policy
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "infos" and p.kind is not inspect.Parameter.POSITIONAL_ONLY
               for p in parameters)


def _describe(obj: Any) -> str:
    if type(obj).__repr__ is object.__repr__:
        return f"an instance of {type(obj).__name__}"
    text = repr(obj)
    return f"{text[:60] + '...' if len(text) > 60 else text} ({type(obj).__name__})"


def _where(error: BaseException) -> str:
    """`` (at file:line)`` of the innermost frame of ``error``'s traceback, or ''."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _call_signature(function: Callable[..., Any], *candidates: tuple[Any, ...]) -> int | None:
    """Index of the first argument tuple of ``candidates`` that ``function`` accepts (None:
    none; a function without an inspectable signature takes the first)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return 0
    for index, args in enumerate(candidates):
        try:
            signature.bind(*args)
        except TypeError:
            continue
        return index
    return None


# --------------------------------------------------------------------------------------------
# PettingZoo level
# --------------------------------------------------------------------------------------------


class PettingZooPolicy:
    """A PettingZoo-level policy (``observations dict -> actions dict`` of one community)
    behind :class:`~agents.policy.Policy` (module docstring).

    Args:
        policy: the callable; ``policy.mechanism``, if set, is the mechanism it must be
            evaluated under.
        name: its name in tables.
    """

    def __init__(self, policy: Callable[..., Any], name: str) -> None:
        self.policy = policy
        self.name = name
        self.mechanism: str | None = getattr(policy, "mechanism", None)
        self._wrapper: Any = None  # the PettingZoo env of the evaluated config, for its checks
        self._copies: list[Callable[..., Any]] = []
        self.takes_infos = _takes_infos(policy)

    def reset(self, env: Any, seed: int | None = None) -> None:
        """A fresh copy of the policy per environment of ``env`` (its ``reset()`` called);
        the PettingZoo env of ``env``'s config (one community on the CPU), whose agent names,
        spaces and action checks the adapter uses."""
        single = env_config(env.config, n_envs=1, device="cpu")
        if self._wrapper is None or self._wrapper.config != single:
            from envs.pettingzoo_env import P2PParallelEnv

            self._wrapper = P2PParallelEnv(single, engine="torch")
        if len(self._wrapper.possible_agents) != env.n_agents:
            raise ConfigError(f"policy {self.name!r}: the PettingZoo env has "
                              f"{len(self._wrapper.possible_agents)} agents, the core "
                              f"{env.n_agents}")
        try:
            self._copies = [copy.deepcopy(self.policy) for _ in range(env.n_envs)]
        except Exception as error:
            raise ValueError(f"policy {self.name!r}: cannot copy it for each of the "
                             f"{env.n_envs} environments of the batch ({type(error).__name__}: "
                             f"{error}); evaluate with --batch-size 1") from None
        for policy in self._copies:
            reset = getattr(policy, "reset", None)
            if callable(reset):
                reset()

    def observations(self, obs: Tensor) -> list[dict[str, np.ndarray]]:
        """The core's ``obs [B, N, obs_dim]`` as each environment's PettingZoo observation
        dict: agent name -> float32 ``(obs_dim,)`` (``envs.pettingzoo_env.TorchEngine``'s
        conversion)."""
        array = obs.detach().cpu().numpy().astype(np.float32)
        agents = self._wrapper.possible_agents
        return [dict(zip(agents, rows, strict=True)) for rows in array]

    def actions(self, actions: Any, env_index: int) -> np.ndarray:
        """One environment's action dict as ``[N, *action_shape]`` in ``possible_agents``
        order, checked as the PettingZoo env checks it, then against the space's bounds;
        ValueError naming the policy, the environment, the agent and what is allowed."""
        wrapper = self._wrapper
        try:
            batch = wrapper._action_batch(actions)  # the PettingZoo env's own checks
        except ValueError as error:
            raise ValueError(f"policy {self.name!r} (environment {env_index}): "
                             f"{error}") from None
        space = wrapper.action_space(wrapper.possible_agents[0])
        if wrapper.config.action.type == "continuous":
            valid = ((batch >= space.low - 1e-6) & (batch <= space.high + 1e-6)).all(-1)
            allowed = "[battery fraction in [-1, 1], price fraction in [0, 1]]"
        else:
            valid = (batch >= 0) & (batch < space.n)
            allowed = f"an integer in 0..{space.n - 1}"
        if not valid.all():
            agent = wrapper.possible_agents[int(np.argmin(valid))]
            raise ValueError(f"policy {self.name!r} (environment {env_index}): action of agent "
                             f"{agent!r} is {np.asarray(actions[agent]).tolist()}; allowed: "
                             f"{allowed} (the PettingZoo action space {space})")
        return batch

    def infos(self, env: Any) -> list[dict[str, dict[str, float]]]:
        """Each environment's infos as the PettingZoo env gives them with the observations
        now in hand: its ``reset()`` infos before the first step of an episode, else its last
        ``step()``'s (``env.last_info``; ``envs.pettingzoo_env.engine_info``, then
        ``P2PParallelEnv.agent_infos``)."""
        from envs.pettingzoo_env import engine_info

        last = env.last_info
        first = env.step_of_day == 0
        if env.episode_days > 1:
            first = first & (env.day_of_episode == 0)
        days, first = env.day.tolist(), first.tolist()
        return [self._wrapper.reset_infos(days[b]) if last is None or first[b]
                else self._wrapper.agent_infos(engine_info(last, b))
                for b in range(env.n_envs)]

    def act(self, obs: Tensor, env: Any) -> Tensor:
        if len(self._copies) != env.n_envs:
            raise RuntimeError(f"policy {self.name!r}: act() before reset(env)")
        observations = self.observations(obs)
        if self.takes_infos:
            infos = self.infos(env)
            rows = [self.actions(policy(observations[b], infos=infos[b]), b)
                    for b, policy in enumerate(self._copies)]
        else:
            rows = [self.actions(policy(observations[b]), b)
                    for b, policy in enumerate(self._copies)]
        actions = torch.as_tensor(np.stack(rows), device=env.device)
        if env.config.action.type == "continuous":
            return actions.to(env.dtype)
        return actions.long()  # integral, checked by _action_batch


# --------------------------------------------------------------------------------------------
# Batched level
# --------------------------------------------------------------------------------------------


class BatchedPolicy:
    """A batched policy (``act(obs)`` or ``act(obs, env)`` on ``[B, N, obs_dim]``) behind
    :class:`~agents.policy.Policy`, its actions' shape checked (module docstring).

    Args:
        policy: the object; optional ``reset(env, seed)`` (or ``reset(env)``, ``reset()``)
            and ``mechanism``.
        name: its name in tables.
    """

    def __init__(self, policy: Any, name: str) -> None:
        self.policy = policy
        self.name = name
        self.mechanism: str | None = getattr(policy, "mechanism", None)
        probe = (None, None)
        self._act_arity = _call_signature(policy.act, probe, probe[:1])
        if self._act_arity is None:
            raise PolicyLoadError(f"policy {name!r}: {type(policy).__name__}.act takes neither "
                                  f"(obs, env) nor (obs); expected act(obs [B, N, obs_dim]) or "
                                  f"act(obs, env) returning the actions")
        reset = getattr(policy, "reset", None)
        self._reset_arity = None
        if callable(reset):
            self._reset_arity = _call_signature(reset, (None, None), (None,), ())
            if self._reset_arity is None:
                raise PolicyLoadError(f"policy {name!r}: {type(policy).__name__}.reset takes "
                                      f"neither (env, seed), (env) nor (); expected "
                                      f"reset(env, seed=None)")

    def reset(self, env: Any, seed: int | None = None) -> None:
        if self._reset_arity is not None:
            self.policy.reset(*(env, seed)[:2 - self._reset_arity])

    def act(self, obs: Tensor, env: Any) -> Tensor:
        actions = (self.policy.act(obs, env) if self._act_arity == 0
                   else self.policy.act(obs))
        b, n = env.n_envs, env.n_agents
        continuous = env.config.action.type == "continuous"
        shape = (b, n, 2) if continuous else (b, n)
        returned = actions
        try:
            actions = torch.as_tensor(actions, device=env.device)
        except (TypeError, ValueError, RuntimeError):
            actions = None
        if actions is None or tuple(actions.shape) != shape or actions.dtype == torch.bool \
                or actions.is_complex():
            got = (f"{type(returned).__name__}" if actions is None
                   else f"shape {list(actions.shape)}, dtype {actions.dtype}")
            if isinstance(returned, dict):
                got += (" (an action dict: a PettingZoo-level policy is a callable, "
                        "__call__(observations), without an act method)")
            allowed = ("battery fraction in [-1, 1], price fraction in [0, 1]" if continuous
                       else f"integers in 0..{env.n_discrete_actions - 1}")
            raise ValueError(f"policy {self.name!r}: act returned {got}; expected a tensor of "
                             f"shape {list(shape)} = [n_envs, n_agents{', 2' * continuous}] "
                             f"({allowed})")
        return actions.to(env.dtype) if continuous else actions


# --------------------------------------------------------------------------------------------
# stable-baselines3
# --------------------------------------------------------------------------------------------


def _sb3_class(name: str) -> type:
    import stable_baselines3

    return getattr(stable_baselines3, name.upper())


def detect_sb3_algorithm(data: dict[str, Any]) -> str | None:
    """The SB3 algorithm of a model file's saved ``data`` (its attributes), or None: PPO has
    ``clip_range``, A2C ``n_steps`` without it, DQN ``exploration_fraction``, SAC
    ``target_entropy``, TD3 ``policy_delay`` (DDPG models load as TD3: the same actor)."""
    if "clip_range" in data:
        return "ppo"
    if "n_steps" in data:
        return "a2c"
    if "exploration_fraction" in data:
        return "dqn"
    if "target_entropy" in data:
        return "sac"
    if "policy_delay" in data:
        return "td3"
    return None


def _load_sb3(spec: str, fields: list[str]) -> SB3Policy:
    if len(fields) not in (1, 2) or not fields[-1]:
        raise PolicyLoadError(f"policy '{spec}': expected sb3:path/to/model.zip or "
                              f"sb3:<algo>:path/to/model.zip (algo: {', '.join(SB3_ALGORITHMS)})")
    path = Path(fields[-1])
    if not path.is_file():
        raise PolicyLoadError(f"policy '{spec}': no model file at '{path}' (expected a "
                              f"stable-baselines3 model.save zip)")
    if len(fields) == 2:
        algo = fields[0].lower()
        if algo not in SB3_ALGORITHMS:
            raise PolicyLoadError(f"policy '{spec}': unknown SB3 algorithm {fields[0]!r}; "
                                  f"allowed: {', '.join(SB3_ALGORITHMS)}")
    else:
        algo = None
    from stable_baselines3.common.save_util import load_from_zip_file

    try:
        if not zipfile.is_zipfile(path):
            raise ValueError("not a zip file")
        data, _, _ = load_from_zip_file(path, load_data=True, device="cpu")
        if algo is None:
            algo = detect_sb3_algorithm(data or {})
            if algo is None:
                raise PolicyLoadError(f"policy '{spec}': cannot tell which SB3 algorithm "
                                      f"saved '{path}'; name it: sb3:<algo>:{path} (algo: "
                                      f"{', '.join(SB3_ALGORITHMS)})")
        model = _sb3_class(algo).load(path, device="cpu", print_system_info=False)
    except PolicyLoadError:
        raise
    except Exception as error:
        raise PolicyLoadError(f"policy '{spec}': cannot load '{path}' as a stable-baselines3 "
                              f"{(algo or 'model').upper()}: {type(error).__name__}: "
                              f"{error}") from None
    return SB3Policy(model, spec)


class SB3Policy:
    """A stable-baselines3 model trained on ``envs.make_vec_env`` behind
    :class:`~agents.policy.Policy`: deterministic ``model.predict`` on the ``[B * N,
    obs_dim]`` local observations (as ``agents.sb3_baselines`` acts).

    Args:
        model: the loaded SB3 model.
        name: its name in tables.
    """

    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.name = name
        self.mechanism: str | None = None

    def reset(self, env: Any, seed: int | None = None) -> None:
        """Refuse an env whose ``envs.make_vec_env`` spaces differ from the model's."""
        from envs.sb3_vec_env import SB3VecEnv

        vec_env = SB3VecEnv(env, step_infos=False)
        for what in ("observation_space", "action_space"):
            trained, given = getattr(self.model, what), getattr(vec_env, what)
            if trained != given:
                hint = (f"; the env's observations are {list(env.feature_names)}"
                        if what == "observation_space" else "")
                raise ConfigError(f"policy {self.name!r}: the model was trained with "
                                  f"{what.replace('_', ' ')} {trained}, envs.make_vec_env of "
                                  f"the evaluated config has {given}{hint}; evaluate it in the "
                                  f"env config it was trained on")

    @torch.no_grad()
    def act(self, obs: Tensor, env: Any) -> Tensor:
        b, n = obs.shape[:2]
        flat = obs.reshape(b * n, -1).to(torch.float32).cpu().numpy()
        action, _ = self.model.predict(flat, deterministic=True)
        action = torch.as_tensor(action, device=obs.device)
        if env.config.action.type == "discrete":
            return action.reshape(b, n).long()
        return symmetric_to_env(action.reshape(b, n, -1).to(env.dtype))
