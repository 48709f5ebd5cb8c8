"""Fault injection: Byzantine and faulty executor behaviours.

A behaviour decides what an executor does to an honest output before it signs and returns it
(or whether it crashes or stalls first). Behaviours are selected per executor index in
``bft_ray.init(faults={index: behaviour})`` by name, as an object, or as any callable
``output -> output`` so users can model their own failure modes.

========================  =================================================================
name                      behaviour
========================  =================================================================
``honest``                returns the honest output
``bitflip``               flips one bit of one element (default: the top exponent bit)
``gaussian_noise``        adds ``N(0, scale)`` noise to every float element
``zeros``                 replaces every numeric leaf by zeros
``stale``                 replays its previous output (honest on its first task)
``random``                replaces numeric leaves by random values of the same shape/dtype
``crash``                 computes, then kills its own process before returning
``slow``                  sleeps ``seconds`` before running, then answers honestly
``collude``               members of one group return the same wrong output
``intermittent``          applies an inner behaviour with probability ``p``
``unwatched``             honest at first, then lies whenever it guesses it is not checked
``wire(fn)``              replaces the signed answer bytes by ``fn(answer, ctx)`` (anything)
========================  =================================================================

Behaviours are deterministic for a given ``(seed, executor index, task id, attempt)``, so a
failing test replays exactly.

Example:
    >>> import numpy as np
    >>> from bft_ray import faults
    >>> b = faults.resolve("zeros")
    >>> b.corrupt({"y": np.ones(2)}, faults.FaultContext(0, "t1", 0)).get("y")
    array([0., 0.])
    >>> faults.resolve(lambda out: out * 2).corrupt(np.ones(1), faults.FaultContext(0, "t", 0))
    array([2.])
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import blake3
import numpy as np

from bft_ray.compare.canonical import tree_map
from bft_ray.errors import ConfigError

__all__ = [
    "BitFlip",
    "Behaviour",
    "Collude",
    "Crash",
    "Custom",
    "FaultContext",
    "GaussianNoise",
    "Honest",
    "Intermittent",
    "RandomOutput",
    "Unwatched",
    "Slow",
    "Stale",
    "WireFault",
    "Zeros",
    "bitflip",
    "collude",
    "crash",
    "gaussian_noise",
    "honest",
    "intermittent",
    "known_faults",
    "random",
    "resolve",
    "slow",
    "stale",
    "unwatched",
    "wire",
    "zeros",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FaultContext:
    """What a behaviour knows about the call it corrupts."""

    executor_index: int
    task_id: str
    attempt: int
    seed: int = 0

    def rng(self, salt: str = "") -> np.random.Generator:
        """A generator seeded by this call, so corruption replays exactly."""
        key = f"{self.seed}/{self.executor_index}/{self.task_id}/{self.attempt}/{salt}"
        return np.random.default_rng(
            int.from_bytes(blake3.blake3(key.encode()).digest()[:8], "little")
        )


class Behaviour:
    """Base class: an honest executor. Subclasses override :meth:`before` or :meth:`corrupt`."""

    name = "honest"

    def before(self, ctx: FaultContext) -> None:
        """Called before the user function runs (crash or stall here)."""

    def corrupt(self, output: Any, ctx: FaultContext) -> Any:
        """Return what the executor reports instead of ``output``."""
        return output

    def on_wire(self, answer: bytes, ctx: FaultContext) -> Any:
        """Return what the executor's actor method returns instead of its signed answer bytes.

        The last word of an executor process: a behaviour may return other bytes or any
        object at all (Ray then pickles it), as a machine under an attacker's control could.
        The trusted side must cope with whatever comes back.
        """
        return answer

    @property
    def is_honest(self) -> bool:
        return type(self) is Behaviour or isinstance(self, Honest)

    def __repr__(self) -> str:
        # Short and readable for report tables: positional values, defaults (None) left out.
        fields = ", ".join(
            repr(v) for k, v in vars(self).items() if not k.startswith("_") and v is not None
        )
        return f"{self.name}({fields})" if fields else self.name


class Honest(Behaviour):
    """Returns the honest output."""


# -- numeric leaf helpers ---------------------------------------------------------------------


def _map_numeric(output: Any, fn: Callable[[np.ndarray], np.ndarray], floats_only: bool) -> Any:
    """Apply ``fn`` to numeric leaves as numpy arrays, converting back to the leaf's type."""

    def leaf(x: Any) -> Any:
        if isinstance(x, bool):
            return x
        if isinstance(x, np.ndarray):
            if x.dtype.kind in ("fc" if floats_only else "fciu"):
                return fn(x.copy())
            return x
        if isinstance(x, float) or (isinstance(x, int) and not floats_only):
            return type(x)(
                fn(np.asarray(x, dtype=np.float64 if isinstance(x, float) else np.int64)).item()
            )
        if type(x).__module__.startswith("torch"):
            import torch

            if isinstance(x, torch.Tensor) and (
                x.is_floating_point()
                or x.is_complex()
                or (not floats_only and x.dtype != torch.bool)
            ):
                wide = x.detach().cpu()
                narrow = wide.dtype
                if narrow == torch.bfloat16 or "float8" in str(narrow):
                    wide = wide.to(torch.float32)
                out = torch.from_numpy(np.ascontiguousarray(fn(wide.numpy().copy())))
                return out.to(dtype=narrow, device=x.device)
        return x

    return tree_map(leaf, output)


class BitFlip(Behaviour):
    """Flip one bit of one element.

    Args:
        bit: Bit index within the element, counted from the least significant bit. ``None``
            picks the second-highest bit: the top exponent bit of IEEE floats (a large change
            for any value, including zero) and a large magnitude change for integers.
    """

    name = "bitflip"

    def __init__(self, bit: int | None = None) -> None:
        self.bit = bit

    def corrupt(self, output: Any, ctx: FaultContext) -> Any:
        rng = ctx.rng("bitflip")
        sizes: list[int] = []
        _map_numeric(output, lambda a: sizes.append(a.size) or a, floats_only=False)
        candidates = [i for i, s in enumerate(sizes) if s > 0]
        if not candidates:
            return output
        target_leaf = candidates[int(rng.integers(len(candidates)))]
        counter = iter(range(len(sizes)))

        def flip(a: np.ndarray) -> np.ndarray:
            if next(counter) != target_leaf:
                return a
            flat = a.reshape(-1)
            idx = int(rng.integers(flat.size))
            width = flat.dtype.itemsize * 8
            if flat.dtype.kind == "c":  # flip within the real part
                width //= 2
                flat = flat.view(np.dtype(f"f{flat.dtype.itemsize // 2}"))
                idx *= 2
            bit = self.bit if self.bit is not None else width - 2
            uint = flat.view(np.dtype(f"u{width // 8}"))
            uint[idx] ^= np.array(1 << (bit % width), dtype=uint.dtype)
            return a

        return _map_numeric(output, flip, floats_only=False)


class GaussianNoise(Behaviour):
    """Add ``N(0, scale)`` noise to every float element."""

    name = "gaussian_noise"

    def __init__(self, scale: float = 0.1) -> None:
        if scale < 0:
            raise ConfigError(f"gaussian_noise scale must be >= 0 (got {scale})")
        self.scale = scale

    def corrupt(self, output: Any, ctx: FaultContext) -> Any:
        rng = ctx.rng("noise")

        def noisy(a: np.ndarray) -> np.ndarray:
            noise = rng.normal(0.0, self.scale, size=a.shape)
            return (a + noise).astype(a.dtype)

        return _map_numeric(output, noisy, floats_only=True)


class Zeros(Behaviour):
    """Replace every numeric leaf by zeros (a worker that skips the work)."""

    name = "zeros"

    def corrupt(self, output: Any, ctx: FaultContext) -> Any:
        return _map_numeric(output, np.zeros_like, floats_only=False)


class RandomOutput(Behaviour):
    """Replace numeric leaves by random values of the same shape and dtype."""

    name = "random"

    def corrupt(self, output: Any, ctx: FaultContext) -> Any:
        rng = ctx.rng("random")

        def rand(a: np.ndarray) -> np.ndarray:
            if a.dtype.kind in "fc":
                return rng.standard_normal(a.shape).astype(a.dtype)
            info = np.iinfo(a.dtype)
            return rng.integers(info.min, info.max, size=a.shape, dtype=a.dtype, endpoint=True)

        return _map_numeric(output, rand, floats_only=False)


class Stale(Behaviour):
    """Replay the previous output (a worker that caches instead of computing).

    On its first task there is nothing to replay, so it answers honestly.
    """

    name = "stale"

    def __init__(self) -> None:
        self._last: Any = None
        self._has_last = False

    def corrupt(self, output: Any, ctx: FaultContext) -> Any:
        previous, had = self._last, self._has_last
        self._last, self._has_last = output, True
        return previous if had else output


class Crash(Behaviour):
    """Compute, then kill the executor process before the answer leaves it.

    Args:
        after: Number of tasks answered honestly before the crash.
    """

    name = "crash"

    def __init__(self, after: int = 0) -> None:
        self.after = after
        self._seen = 0

    def corrupt(self, output: Any, ctx: FaultContext) -> Any:
        self._seen += 1
        if self._seen > self.after:
            logger.warning(
                "fault injection: executor %d crashes on %s", ctx.executor_index, ctx.task_id
            )
            os._exit(1)
        return output


class Slow(Behaviour):
    """Sleep ``seconds`` before running the task, then answer honestly."""

    name = "slow"

    def __init__(self, seconds: float = 5.0) -> None:
        if seconds < 0:
            raise ConfigError(f"slow seconds must be >= 0 (got {seconds})")
        self.seconds = seconds

    def before(self, ctx: FaultContext) -> None:
        time.sleep(self.seconds)


class Collude(Behaviour):
    """Members of one group return the same wrong output.

    The wrong output is the honest one plus noise seeded by the group and the task, so all
    members (which compute the same honest output) report an identical lie and vote as a bloc.
    """

    name = "collude"

    def __init__(self, group: str = "cartel", scale: float = 1.0) -> None:
        self.group = group
        self.scale = scale

    def corrupt(self, output: Any, ctx: FaultContext) -> Any:
        shared = FaultContext(-1, ctx.task_id, ctx.attempt, ctx.seed)
        rng = shared.rng(f"collude/{self.group}")

        def lie(a: np.ndarray) -> np.ndarray:
            return (a + self.scale * (1.0 + rng.random(a.shape))).astype(a.dtype)

        return _map_numeric(output, lie, floats_only=True)


class Intermittent(Behaviour):
    """Apply ``inner`` with probability ``p`` per task (deterministic per task id)."""

    name = "intermittent"

    def __init__(self, p: float = 0.3, inner: Any = "bitflip") -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"intermittent p must be in [0, 1] (got {p})")
        self.p = p
        self.inner = resolve(inner)

    def _active(self, ctx: FaultContext) -> bool:
        return bool(ctx.rng("intermittent").random() < self.p)

    def before(self, ctx: FaultContext) -> None:
        if self._active(ctx):
            self.inner.before(ctx)

    def corrupt(self, output: Any, ctx: FaultContext) -> Any:
        return self.inner.corrupt(output, ctx) if self._active(ctx) else output

    def on_wire(self, answer: bytes, ctx: FaultContext) -> Any:
        return self.inner.on_wire(answer, ctx) if self._active(ctx) else answer


class Unwatched(Behaviour):
    """A patient cheater that lies only when it believes nobody checks.

    Honest for its first ``after`` tasks (it earns trust first); afterwards it applies
    ``inner`` unless its guess says the task will be checked. Its guess is all an executor can
    compute: a public hash of the task id falling under ``rate`` (the audit rate it assumes).
    Spot checks draw their audits from a key the executor never sees, so the guess is a coin
    uncorrelated with the real audits and the cheater is caught at the audit rate anyway.
    """

    name = "unwatched"

    def __init__(self, rate: float = 0.1, inner: Any = "zeros", after: int = 0) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"unwatched rate must be in [0, 1] (got {rate})")
        self.rate = rate
        self.inner = resolve(inner)
        self.after = after
        self._seen = 0

    def expects_check(self, task_id: str) -> bool:
        h = blake3.blake3(task_id.encode()).digest(8)
        return int.from_bytes(h, "little") / float(1 << 64) < self.rate

    def corrupt(self, output: Any, ctx: FaultContext) -> Any:
        self._seen += 1
        if self._seen <= self.after or self.expects_check(ctx.task_id):
            return output
        return self.inner.corrupt(output, ctx)


class WireFault(Behaviour):
    """Wrap a callable ``(answer_bytes, ctx) -> anything`` that replaces the executor's answer.

    For adversarial tests: it sees the honest, signed answer bytes and may return any object
    (other bytes, a pickle bomb, an exception), exactly as a compromised executor could.
    """

    name = "wire"

    def __init__(self, fn: Callable[[bytes, FaultContext], Any]) -> None:
        self.fn = fn

    def on_wire(self, answer: bytes, ctx: FaultContext) -> Any:
        return self.fn(answer, ctx)

    def __repr__(self) -> str:
        return f"wire({getattr(self.fn, '__qualname__', repr(self.fn))})"


class Custom(Behaviour):
    """Wrap a user callable ``output -> output``."""

    name = "custom"

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def corrupt(self, output: Any, ctx: FaultContext) -> Any:
        return self.fn(output)

    def __repr__(self) -> str:
        return f"custom({getattr(self.fn, '__qualname__', repr(self.fn))})"


# Lower-case constructors, the documented way to build behaviours with arguments.
def honest() -> Behaviour:
    """An honest executor."""
    return Honest()


def bitflip(bit: int | None = None) -> Behaviour:
    """See :class:`BitFlip`."""
    return BitFlip(bit)


def gaussian_noise(scale: float = 0.1) -> Behaviour:
    """See :class:`GaussianNoise`."""
    return GaussianNoise(scale)


def zeros() -> Behaviour:
    """See :class:`Zeros`."""
    return Zeros()


def stale() -> Behaviour:
    """See :class:`Stale`."""
    return Stale()


def random() -> Behaviour:
    """See :class:`RandomOutput`."""
    return RandomOutput()


def crash(after: int = 0) -> Behaviour:
    """See :class:`Crash`."""
    return Crash(after)


def slow(seconds: float = 5.0) -> Behaviour:
    """See :class:`Slow`."""
    return Slow(seconds)


def collude(group: str = "cartel", scale: float = 1.0) -> Behaviour:
    """See :class:`Collude`."""
    return Collude(group, scale)


def intermittent(p: float = 0.3, inner: Any = "bitflip") -> Behaviour:
    """See :class:`Intermittent`."""
    return Intermittent(p, inner)


def unwatched(rate: float = 0.1, inner: Any = "zeros", after: int = 0) -> Behaviour:
    """See :class:`Unwatched`."""
    return Unwatched(rate, inner, after)


def wire(fn: Callable[[bytes, FaultContext], Any]) -> Behaviour:
    """See :class:`WireFault`."""
    return WireFault(fn)


_REGISTRY: dict[str, Callable[[], Behaviour]] = {
    "honest": honest,
    "bitflip": bitflip,
    "gaussian_noise": gaussian_noise,
    "zeros": zeros,
    "stale": stale,
    "random": random,
    "crash": crash,
    "slow": slow,
    "collude": collude,
    "intermittent": intermittent,
    "unwatched": unwatched,
}


def known_faults() -> list[str]:
    """Names accepted by :func:`resolve`."""
    return sorted(_REGISTRY)


def resolve(spec: Any) -> Behaviour:
    """Turn a fault spec (``None``, a name, a :class:`Behaviour` or a callable) into a behaviour.

    Raises:
        ConfigError: For an unknown name or an unsupported spec.
    """
    if spec is None:
        return Honest()
    if isinstance(spec, Behaviour):
        return spec
    if isinstance(spec, str):
        try:
            return _REGISTRY[spec]()
        except KeyError:
            raise ConfigError(
                f"unknown fault {spec!r}. Known faults: {', '.join(known_faults())}; or pass a "
                "bft_ray.faults.Behaviour or a callable output -> output."
            ) from None
    if callable(spec):
        return Custom(spec)
    raise ConfigError(
        f"fault spec {spec!r} is neither a name, a Behaviour nor a callable. "
        f"Known faults: {', '.join(known_faults())}."
    )


# -- Byzantine verifiers ------------------------------------------------------------------------

VERIFIER_FAULTS: dict[str, str] = {
    "honest": "follows the protocol",
    "silent": "sends nothing and acknowledges nothing (a mute verifier)",
    "crash": "exits after handling a few messages, and is not restarted",
    "equivocate": "as leader, signs two different blocks for one round, one per half of the group",
    "wrong_vote": "votes for every block and signs every committed verdict, checked or not",
    "forge": "sends votes, proposals, timeouts and certificate signatures with bad signatures",
    "censor": "as leader, proposes blocks that leave every pending claim out",
    "bad_verdict": (
        "as leader, proposes claims it rewrote: another representative, a dropped honest "
        "output, an invented timeout"
    ),
}


def resolve_verifier_fault(spec: Any) -> str:
    """Validate a verifier behaviour name (``bft_ray.init(verifier_faults={i: name})``).

    Example:
        >>> resolve_verifier_fault("censor")
        'censor'
        >>> resolve_verifier_fault("lazy")
        Traceback (most recent call last):
        ...
        bft_ray.errors.ConfigError: unknown verifier behaviour 'lazy'; known: bad_verdict, censor, crash, equivocate, forge, honest, silent, wrong_vote
    """
    from bft_ray.errors import ConfigError

    if not isinstance(spec, str) or spec not in VERIFIER_FAULTS:
        raise ConfigError(
            f"unknown verifier behaviour {spec!r}; known: {', '.join(sorted(VERIFIER_FAULTS))}"
        )
    return spec
