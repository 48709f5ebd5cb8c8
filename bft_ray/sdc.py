"""Fleet silent-data-corruption (SDC) check: deterministic kernels on every executor, judged.

GPUs that compute wrong numbers without crashing cost training runs. This is the check an
operator runs between jobs (``bft-ray sdc-check``, ``jobs/sdc_check.py``, or
:func:`run_check` from Python): every executor runs the same suite of deterministic kernels with
fixed seeds and sizes, **one replica per device** (unverified on purpose: each device is the
thing under test), ``repeat`` times, and every answer is judged.

**Suite** (:func:`suite`; sizes grow with ``level``: ``quick``, ``standard``, ``long``):

=================  =====================  ===========================================
kernel / dtype     judged against         what it exercises
=================  =====================  ===========================================
``igemm/int8``     the exact known answer integer GEMM (int8 x int8 -> int32)
``gemm/float32``   same-model majority    fp32 GEMM (TF32 off)
``gemm/float16``   same-model majority    fp16 GEMM (tensor cores on a GPU)
``gemm/bfloat16``  same-model majority    bf16 GEMM
``reduce/int64``   the exact known answer row/column sums, total, prefix sums, max
``reduce/float32`` same-model majority    the same reductions in fp32
``transformer/*``  same-model majority    a pre-LN transformer block, forward and
                                          backward (every parameter's gradient)
=================  =====================  ===========================================

Inputs (and the transformer's weights) are drawn on the driver from fixed seeds and shipped to
every executor, so every device computes on identical bits; known answers are computed on the
driver, exactly, with numpy integer arithmetic.

**Judging** (:func:`judge_run`, one kernel case and one repeat at a time). Devices are grouped
by *model*: device name plus torch and CUDA versions (homogeneous redundancy: the same
deterministic kernel on the same model and software returns the same bits).

1. A case with a known answer: any element that differs from it is a mismatch.
2. Otherwise, within one model group: if a strict majority of the group returned bit-identical
   outputs, that output is the reference and any bit that differs is a mismatch (``majority``).
3. If there is no bitwise majority and the group has at least 3 devices, the reference is the
   elementwise lower median of the group (always one of the devices' own values), and the
   tolerance is *calibrated from those devices*: each device's spread is its largest deviation
   from the median, in scaled ulps (``|x - r| / (eps(dtype) * max(|r|, rms(r)))``; for integers,
   the absolute difference), and the tolerance is
   ``max(MIN_TOLERANCE_ULPS, SPREAD_FACTOR * lower-median of the spreads)``. An element beyond
   it is a mismatch (``median``). The median and the median of spreads both stay honest while a
   minority of the group is faulty, the same assumption as bft-ray's threat model.
4. Two devices of a model without a bitwise match are compared with ``MIN_TOLERANCE_ULPS``: if
   they differ beyond it, nobody can say which is wrong and both runs are ``disputed``. A
   device alone in its model group is ``unjudged`` for cases without a known answer.

Every mismatching element contributes the positions of its flipped bits (actual XOR expected,
bit 0 = least significant, in the output's own dtype: bf16 and fp16 have 16 positions) to a
histogram: a stuck or flaky bit shows up as one tall bar.

**Verdict** per device (:func:`classify`), first rule that applies:

* ``faulty``: a mismatch against a *known answer* (a healthy device never gets an integer GEMM
  or an integer sum wrong); or mismatches in ``FAULTY_MIN_MISMATCH_RUNS`` (2) or more runs
  (the corruption reproduced, or hit several kernels); or an answer that failed admission (its
  signed bytes are corrupt).
* ``suspect``: a single mismatching run that did not reproduce, a ``disputed`` run, or a run
  that failed loudly (the kernel raised, the executor crashed or stalled past the time limit).
* ``healthy``: every judged run matched.

Faulty devices get the suggestion to quarantine them (drain, remove from the pool, rerun with
``--level long`` before returning them to service); suspect ones to rerun a long check.

**Report** (:class:`SdcReport`): per device its node, slot, GPU UUID and PCI bus id (CUDA), and
per kernel case the expected versus actual digest, mismatching elements, flipped-bit histogram,
how often the mismatch reproduced and the verdict; as rich tables, JSON
(:meth:`SdcReport.to_json`, round-trips with :meth:`SdcReport.from_json`) and a PNG heatmap of
devices by kernels (:meth:`SdcReport.write_heatmap`).

Example:
    >>> import numpy as np
    >>> from bft_ray.compare.canonical import canonicalize
    >>> good = canonicalize({"y": np.arange(4, dtype=np.float32)})
    >>> flipped = np.arange(4, dtype=np.float32)
    >>> flipped.view(np.uint32)[2] ^= 1 << 22          # one mantissa bit of one element
    >>> outs = {0: good, 1: good, 2: canonicalize({"y": flipped}), 3: good}
    >>> j = judge_run(outs, groups={i: "cpu" for i in outs})
    >>> j[2].status, j[2].diff.mismatches, j[2].diff.bit_histogram[22], j[0].status
    ('mismatch', 1, 1, 'ok')

    Against a cluster (see :func:`run_check`)::

        cluster = bft_ray.init(executors=4)
        cluster.inject_fault(2, bft_ray.faults.intermittent(0.5, "bitflip"))
        report = run_check(cluster, level="quick", out_dir="sdc-results")
        report.verdicts()   # {'slot0': 'healthy', 'slot1': 'healthy', 'slot2': 'faulty', ...}
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import logging
import math
import os
import socket
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import blake3
import click
import numpy as np

from bft_ray import faults as fault_lib
from bft_ray.compare.canonical import Canonical, Leaf, canonicalize
from bft_ray.compare.digest import digest_canonical
from bft_ray.errors import ConfigError
from bft_ray.progress import progress_bar

__all__ = [
    "DEFAULT_REPEAT",
    "FAULTY_MIN_MISMATCH_RUNS",
    "LEVELS",
    "MIN_TOLERANCE_ULPS",
    "SPREAD_FACTOR",
    "VERDICTS",
    "CaseResult",
    "DeviceReport",
    "Diff",
    "KernelCase",
    "KernelFault",
    "RunJudgement",
    "SdcReport",
    "bit_view",
    "calibrate_tolerance",
    "check_main",
    "classify",
    "compare",
    "device_info",
    "execute_case",
    "flipped_bit_histogram",
    "judge_run",
    "known_answer",
    "make_inputs",
    "median_reference",
    "model_key",
    "parse_inject",
    "quarantine_advice",
    "run_check",
    "sdc_check_command",
    "start_cluster",
    "suite",
]

logger = logging.getLogger(__name__)

LEVELS = ("quick", "standard", "long")
VERDICTS = ("healthy", "suspect", "faulty")
DEFAULT_REPEAT = {"quick": 2, "standard": 3, "long": 10}

# -- verdict thresholds (see the module docstring) -----------------------------------------------
#: Mismatching runs (any kernel, any repeat) that make a device ``faulty`` rather than ``suspect``:
#: one mismatch can be a one-off event worth a rerun; two mean it reproduced or spread.
FAULTY_MIN_MISMATCH_RUNS = 2
#: Calibrated tolerance = ``SPREAD_FACTOR`` x the typical device's spread (lower median): honest
#: devices of one model spread alike, so 4x their typical spread leaves room for the honest
#: tail while anything a bit flip in an exponent or a high mantissa bit does stands out.
SPREAD_FACTOR = 4.0
#: Floor of any float tolerance, in scaled ulps: where honest devices agree to the last bit or
#: nearly, two ulps still absorb a last-place rounding difference.
MIN_TOLERANCE_ULPS = 2.0

#: Default directory of the JSON report and the PNG heatmap of the command-line entry points.
DEFAULT_OUT = "sdc-results"
JSON_NAME = "sdc_report.json"
PNG_NAME = "sdc_heatmap.png"
DEFAULT_CPU_EXECUTORS = 4

# Task ids are "sdc:<kernel>:<dtype>:r<repeat>:<slot>[:<nonce>]"; faults see them.
_TASK_PREFIX = "sdc"
_FN_KEY = "bft_ray.sdc.execute_case/v1"
_INFO_KEY = "bft_ray.sdc.device_info/v1"


# -- the suite ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KernelCase:
    """One kernel of the suite at one size, with its fixed seed.

    Attributes:
        kernel: ``igemm``, ``gemm``, ``reduce`` or ``transformer``.
        dtype: Compute dtype (``int8``, ``int64``, ``float32``, ``float16``, ``bfloat16``).
        shape: ``(m, k, n)`` for GEMMs, ``(rows, cols)`` for reductions and
            ``(batch, seq, dim, heads)`` for the transformer block.
        seed: Seed of the inputs (fixed per kernel, dtype and level).
        exact: Whether a known answer exists (integer kernels).

    Example:
        >>> c = KernelCase("gemm", "float16", (64, 64, 64), 7)
        >>> c.id, c.exact
        ('gemm/float16', False)
    """

    kernel: str
    dtype: str
    shape: tuple[int, ...]
    seed: int
    exact: bool = False

    @property
    def id(self) -> str:
        """``kernel/dtype``, the case's name in reports."""
        return f"{self.kernel}/{self.dtype}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description of the case."""
        return {**dataclasses.asdict(self), "shape": list(self.shape), "id": self.id}


_SIZES: dict[str, dict[str, tuple[int, ...]]] = {
    "quick": {
        "igemm": (64, 64, 64),
        "gemm": (64, 64, 64),
        "reduce": (64, 256),
        "transformer": (2, 16, 32, 4),
    },
    "standard": {
        "igemm": (1024, 1024, 1024),
        "gemm": (1024, 1024, 1024),
        "reduce": (1024, 4096),
        "transformer": (4, 128, 256, 8),
    },
    "long": {
        "igemm": (2048, 2048, 2048),
        "gemm": (2048, 2048, 2048),
        "reduce": (4096, 8192),
        "transformer": (8, 256, 512, 8),
    },
}
_DTYPES: dict[str, tuple[str, ...]] = {
    "igemm": ("int8",),
    "gemm": ("float32", "float16", "bfloat16"),
    "reduce": ("int64", "float32"),
    "transformer": ("float32", "bfloat16"),
}


def suite(level: str = "quick") -> list[KernelCase]:
    """The kernel cases of a level, in the order executors run them.

    Seeds are ``crc32("kernel/dtype/level")``: fixed, so reruns compute on the same bits. The
    ``quick`` level runs the transformer block in fp32 only.

    Args:
        level: ``quick`` (seconds, CPU friendly), ``standard`` or ``long`` (GPU sizes).

    Raises:
        ValueError: For an unknown level.

    Example:
        >>> [c.id for c in suite("quick")]  # doctest: +NORMALIZE_WHITESPACE
        ['igemm/int8', 'gemm/float32', 'gemm/float16', 'gemm/bfloat16', 'reduce/int64',
         'reduce/float32', 'transformer/float32']
        >>> suite("standard")[1].shape
        (1024, 1024, 1024)
    """
    if level not in _SIZES:
        raise ValueError(f"unknown level {level!r}; levels: {', '.join(LEVELS)}")
    cases = []
    for kernel, shape in _SIZES[level].items():
        for dtype in _DTYPES[kernel]:
            if level == "quick" and kernel == "transformer" and dtype != "float32":
                continue
            seed = zlib.crc32(f"{kernel}/{dtype}/{level}".encode())
            cases.append(KernelCase(kernel, dtype, shape, seed, exact=dtype.startswith("int")))
    return cases


def make_inputs(case: KernelCase) -> dict[str, np.ndarray]:
    """The case's inputs, drawn with numpy from its seed (on the driver, shipped to executors).

    Float inputs are float32; executors cast them to the case's dtype on their device.

    Example:
        >>> x = make_inputs(KernelCase("igemm", "int8", (32, 16, 8), 1, exact=True))
        >>> x["a"].dtype, x["a"].shape, x["b"].shape
        (dtype('int8'), (32, 16), (16, 8))
    """
    rng = np.random.default_rng(case.seed)
    if case.kernel == "igemm":
        m, k, n = case.shape
        return {
            "a": rng.integers(-128, 128, size=(m, k), dtype=np.int8),
            "b": rng.integers(-128, 128, size=(k, n), dtype=np.int8),
        }
    if case.kernel == "gemm":
        m, k, n = case.shape
        return {
            "a": rng.standard_normal((m, k), dtype=np.float32),
            "b": rng.standard_normal((k, n), dtype=np.float32),
        }
    if case.kernel == "reduce":
        if case.dtype == "int64":
            return {"x": rng.integers(-(2**20), 2**20, size=case.shape, dtype=np.int64)}
        return {"x": rng.standard_normal(case.shape, dtype=np.float32)}
    if case.kernel == "transformer":
        b, s, d, _ = case.shape
        f = 4 * d

        def normal(*shape: int, scale: float = 1.0, mean: float = 0.0) -> np.ndarray:
            return (mean + scale * rng.standard_normal(shape)).astype(np.float32)

        return {
            "x": normal(b, s, d),
            "g": normal(b, s, d),
            "ln1_w": normal(d, scale=0.1, mean=1.0),
            "ln1_b": normal(d, scale=0.1),
            "w_qkv": normal(d, 3 * d, scale=d**-0.5),
            "b_qkv": normal(3 * d, scale=0.02),
            "w_o": normal(d, d, scale=d**-0.5),
            "b_o": normal(d, scale=0.02),
            "ln2_w": normal(d, scale=0.1, mean=1.0),
            "ln2_b": normal(d, scale=0.1),
            "w_1": normal(d, f, scale=d**-0.5),
            "b_1": normal(f, scale=0.02),
            "w_2": normal(f, d, scale=f**-0.5),
            "b_2": normal(d, scale=0.02),
        }
    raise ValueError(f"unknown kernel {case.kernel!r}")


def _reductions_np(x: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "row_sum": x.sum(axis=1),
        "col_sum": x.sum(axis=0),
        "total": x.sum().reshape(1),
        "cumsum": x.cumsum(axis=1),
        "col_max": x.max(axis=0),
    }


def known_answer(case: KernelCase, inputs: Mapping[str, np.ndarray]) -> Canonical | None:
    """The exact answer of an integer case, computed on the driver; ``None`` for float cases.

    Built from torch tensors of the dtypes the executors return, so a correct device's answer
    has the same canonical bytes (and digest).

    Example:
        >>> case = KernelCase("igemm", "int8", (32, 16, 8), 1, exact=True)
        >>> known_answer(case, make_inputs(case)).leaves[0].dtype
        'torch.int32'
        >>> known_answer(KernelCase("gemm", "float32", (4, 4, 4), 1), {}) is None
        True
    """
    if not case.exact:
        return None
    import torch

    if case.kernel == "igemm":
        c = inputs["a"].astype(np.int64) @ inputs["b"].astype(np.int64)
        return canonicalize({"c": torch.from_numpy(c.astype(np.int32))})
    if case.kernel == "reduce":
        out = _reductions_np(np.asarray(inputs["x"], dtype=np.int64))
        return canonicalize({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()})
    raise ValueError(f"no known answer for {case.id}")


# -- what runs on the executors ---------------------------------------------------------------


def _torch_device() -> Any:
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _tensor(a: np.ndarray, dtype: Any, dev: Any) -> Any:
    import torch

    # A copy: arrays from the object store are read-only views.
    return torch.from_numpy(np.array(a)).to(device=dev, dtype=dtype)


def _block(x: Any, p: Mapping[str, Any], heads: int) -> Any:
    """A pre-LN causal transformer block, written with plain torch ops (deterministic)."""
    import torch
    import torch.nn.functional as F

    b, s, d = x.shape
    h = F.layer_norm(x, (d,), p["ln1_w"], p["ln1_b"])
    q, k, v = (h @ p["w_qkv"] + p["b_qkv"]).split(d, dim=-1)

    def split_heads(t: Any) -> Any:
        return t.reshape(b, s, heads, d // heads).transpose(1, 2)

    q, k, v = split_heads(q), split_heads(k), split_heads(v)
    att = (q @ k.transpose(-2, -1)) * (d // heads) ** -0.5
    causal = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
    att = att.masked_fill(causal, float("-inf")).softmax(dim=-1)
    o = (att @ v).transpose(1, 2).reshape(b, s, d)
    x = x + o @ p["w_o"] + p["b_o"]
    h = F.layer_norm(x, (d,), p["ln2_w"], p["ln2_b"])
    return x + F.gelu(h @ p["w_1"] + p["b_1"]) @ p["w_2"] + p["b_2"]


def execute_case(case: KernelCase, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Run one kernel case on this process's device (CUDA if present, else the CPU).

    This is what each executor runs; it returns CPU torch tensors (a dict, for the
    transformer a nested one with every gradient). fp32 runs with TF32 off.

    Example:
        >>> case = suite("quick")[0]
        >>> inputs = make_inputs(case)
        >>> canonicalize(execute_case(case, inputs)) == known_answer(case, inputs)
        True
    """
    import torch

    dev = _torch_device()
    cuda = dev.type == "cuda"
    dtype = getattr(torch, case.dtype)
    saved = None
    if cuda:
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    try:
        if case.kernel == "igemm":
            return {"c": _igemm(inputs["a"], inputs["b"], dev).cpu()}
        if case.kernel == "gemm":
            a, b = (_tensor(inputs[k], dtype, dev) for k in ("a", "b"))
            return {"c": (a @ b).cpu()}
        if case.kernel == "reduce":
            x = _tensor(inputs["x"], dtype, dev)
            return {
                "row_sum": x.sum(dim=1).cpu(),
                "col_sum": x.sum(dim=0).cpu(),
                "total": x.sum().reshape(1).cpu(),
                "cumsum": x.cumsum(dim=1).cpu(),
                "col_max": x.amax(dim=0).cpu(),
            }
        if case.kernel == "transformer":
            heads = case.shape[3]
            x = _tensor(inputs["x"], dtype, dev).requires_grad_(True)
            g = _tensor(inputs["g"], dtype, dev)
            params = {
                k: _tensor(v, dtype, dev).requires_grad_(True)
                for k, v in inputs.items()
                if k not in ("x", "g")
            }
            y = _block(x, params, heads)
            (y * g).sum().backward()
            grads = {"x": x.grad.cpu(), **{k: p.grad.cpu() for k, p in params.items()}}
            return {"y": y.detach().cpu(), "grad": grads}
        raise ValueError(f"unknown kernel {case.kernel!r}")
    finally:
        if saved is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _igemm(a_np: np.ndarray, b_np: np.ndarray, dev: Any) -> Any:
    """int8 x int8 -> int32 GEMM: ``torch._int_mm`` (integer tensor cores) on CUDA."""
    import torch

    if dev.type == "cuda":
        a, b = (torch.from_numpy(np.array(x)).to(dev) for x in (a_np, b_np))
        try:
            return torch._int_mm(a, b)
        except (RuntimeError, AttributeError) as exc:
            # Shapes _int_mm refuses: fp64 is exact here (|sum| < 2**31 << 2**53).
            logger.debug("torch._int_mm unavailable (%s): fp64 GEMM instead", exc)
            return (a.double() @ b.double()).to(torch.int32)
    a, b = (torch.from_numpy(np.array(x)).to(torch.int32) for x in (a_np, b_np))
    return a @ b  # |sum| <= k * 128 * 128 < 2**31 for k < 131072


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "cpu"


def device_info() -> dict[str, str]:
    """What this process says about its device (runs on each executor; untrusted).

    Keys: ``device`` (``cuda`` or ``cpu``), ``name`` (GPU or CPU model), ``uuid`` and
    ``pci_bus_id`` (CUDA only; through pynvml when installed, else torch), ``hostname``,
    ``torch`` and ``cuda`` (versions).

    Example:
        >>> sorted(device_info())
        ['cuda', 'device', 'hostname', 'name', 'pci_bus_id', 'torch', 'uuid']
    """
    import torch

    info = {
        "device": "cpu",
        "name": _cpu_model(),
        "uuid": "",
        "pci_bus_id": "",
        "hostname": socket.gethostname(),
        "torch": str(torch.__version__),
        "cuda": str(torch.version.cuda or ""),
    }
    if not torch.cuda.is_available():
        return info
    info["device"] = "cuda"
    try:
        props = torch.cuda.get_device_properties(0)  # Ray's CUDA_VISIBLE_DEVICES: our GPU
        info["name"] = str(props.name)
        uuid = getattr(props, "uuid", None)
        if uuid is not None:
            text = str(uuid)
            info["uuid"] = text if text.startswith("GPU-") else f"GPU-{text}"
        if all(hasattr(props, f) for f in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
            info["pci_bus_id"] = (
                f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
            )
    except Exception as exc:  # a broken device still gets checked
        logger.warning("CUDA device properties: %s", exc)
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(info["uuid"])
            bus = pynvml.nvmlDeviceGetPciInfo(handle).busId
            info["pci_bus_id"] = bus.decode() if isinstance(bus, bytes) else str(bus)
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # no pynvml, or no NVML: torch's bus id stays
        logger.debug("pynvml: %s", exc)
    return info


def model_key(info: Mapping[str, str]) -> str:
    """The group a device is judged in: model name plus torch and CUDA versions.

    Example:
        >>> model_key({"device": "cuda", "name": "NVIDIA H200", "torch": "2.13", "cuda": "12.8"})
        'NVIDIA H200 | torch 2.13 | cuda 12.8'
        >>> model_key({"device": "cpu", "name": "Xeon", "torch": "2.13", "cuda": ""})
        'cpu: Xeon | torch 2.13'
    """
    if "error" in info:
        return f"unknown: {info.get('slot', '?')}"
    name = info.get("name", "?")
    head = name if info.get("device") == "cuda" else f"cpu: {name}"
    key = f"{head} | torch {info.get('torch', '?')}"
    return f"{key} | cuda {info['cuda']}" if info.get("cuda") else key


# -- comparing outputs --------------------------------------------------------------------------


def _is_float(leaf: Leaf) -> bool:
    return leaf.array.dtype.kind in "fc"


def _eps(leaf: Leaf) -> float:
    if leaf.dtype.endswith("bfloat16"):
        return 2.0**-7
    return float(np.finfo(leaf.array.dtype).eps)


def bit_view(leaf: Leaf) -> tuple[np.ndarray, int]:
    """The leaf's elements as unsigned integers of its own width, and that width in bits.

    bf16 (widened to float32 in canonical form) gives its 16 bits back.

    Example:
        >>> from bft_ray.compare.canonical import canonicalize
        >>> import torch
        >>> leaf = canonicalize(torch.tensor([1.0], dtype=torch.bfloat16)).leaves[0]
        >>> bits, width = bit_view(leaf)
        >>> hex(int(bits[0])), width
        ('0x3f80', 16)
    """
    a = np.ascontiguousarray(leaf.array).reshape(-1)
    if leaf.dtype.endswith("bfloat16"):
        return (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16), 16
    if a.dtype.kind == "b":
        return a.view(np.uint8), 8
    if a.dtype.kind == "c":
        half = a.dtype.itemsize // 2
        return a.view(np.dtype(f"u{half}")), half * 8
    return a.view(np.dtype(f"u{a.dtype.itemsize}")), a.dtype.itemsize * 8


def flipped_bit_histogram(actual: np.ndarray, expected: np.ndarray, width: int) -> list[int]:
    """How many elements have each bit position flipped (``actual XOR expected``), LSB first.

    Example:
        >>> a = np.array([0b0001, 0b0100], dtype=np.uint8)
        >>> flipped_bit_histogram(a, np.array([0, 0b0110], dtype=np.uint8), 4)
        [1, 1, 0, 0]
    """
    x = np.bitwise_xor(actual, expected)
    x = x[x != 0]
    return [int(((x >> k) & 1).sum()) for k in range(width)]


def _deviation(actual: Leaf, reference: Leaf) -> np.ndarray:
    """Per element: scaled ulps for floats, absolute difference for integers (float64)."""
    x = np.asarray(actual.array).reshape(-1)
    r = np.asarray(reference.array).reshape(-1)
    if not _is_float(actual):
        return np.abs(x.astype(np.float64) - r.astype(np.float64))
    wide = np.complex128 if x.dtype.kind == "c" else np.float64
    with np.errstate(all="ignore"):
        x64, r64 = x.astype(wide), r.astype(wide)
    finite = r64[np.isfinite(r64)]
    rms = float(np.sqrt(np.mean(np.abs(finite) ** 2))) if finite.size else 0.0
    scale = _eps(actual) * np.maximum(np.abs(r64), rms)
    scale[~(scale > 0)] = np.finfo(np.float64).tiny
    with np.errstate(all="ignore"):
        dev = np.abs(x64 - r64) / scale
    same = (x64 == r64) | (np.isnan(x64) & np.isnan(r64))
    dev[same] = 0.0
    dev[~same & ~np.isfinite(dev)] = np.inf
    return dev


@dataclasses.dataclass
class Diff:
    """How one output differs from a reference.

    Attributes:
        elements: Elements compared.
        mismatches: Elements beyond the tolerance (bitwise in exact mode).
        max_dev_ulps: Largest deviation: scaled ulps for floats (``|x - r| / (eps *
            max(|r|, rms(r)))``), absolute difference for integers; ``inf`` for a NaN or
            infinity where the reference has none, or a different structure.
        bit_histogram: Flipped bit positions over the mismatching elements, LSB first.
        detail: The first mismatching element, or why the outputs are not comparable.
        structural: The outputs differ in structure, dtype or shape.
    """

    elements: int = 0
    mismatches: int = 0
    max_dev_ulps: float = 0.0
    bit_histogram: list[int] = dataclasses.field(default_factory=list)
    detail: str = ""
    structural: bool = False


def _layout(leaves: Sequence[Leaf]) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(leaf.path, leaf.dtype, tuple(leaf.shape)) for leaf in leaves]


def _leaves(x: Canonical | Sequence[Leaf]) -> tuple[Leaf, ...]:
    return tuple(x.leaves) if isinstance(x, Canonical) else tuple(x)


def compare(
    actual: Canonical, reference: Canonical | Sequence[Leaf], tolerance_ulps: float | None = None
) -> Diff:
    """Compare an output with a reference, element by element.

    Args:
        actual: The device's output.
        reference: A known answer, a majority output or a :func:`median_reference`.
        tolerance_ulps: ``None`` compares bits (exact); otherwise float elements mismatch when
            their scaled-ulp deviation exceeds it. Integer elements always compare exactly.

    Example:
        >>> ref = canonicalize({"y": np.array([1.0, 2.0], dtype=np.float32)})
        >>> near = canonicalize({"y": np.array([1.0, 2.0 + 2**-22], dtype=np.float32)})
        >>> compare(near, ref).mismatches, compare(near, ref, tolerance_ulps=4).mismatches
        (1, 0)
    """
    ref = _leaves(reference)
    got = actual.leaves
    total = sum(int(leaf.array.size) for leaf in ref)
    if _layout(got) != _layout(ref):
        return Diff(
            total,
            total,
            math.inf,
            [],
            f"structure differs: {_layout(got)[:3]} vs {_layout(ref)[:3]}",
            structural=True,
        )
    width = max((bit_view(leaf)[1] for leaf in ref), default=0)
    hist = [0] * width
    out = Diff(elements=total, bit_histogram=hist)
    for a, r in zip(got, ref):
        dev = _deviation(a, r)
        if dev.size:
            out.max_dev_ulps = max(out.max_dev_ulps, float(dev.max()))
        a_bits, w = bit_view(a)
        r_bits, _ = bit_view(r)
        if tolerance_ulps is None or not _is_float(a):
            bad = a_bits != r_bits
        else:
            bad = dev > tolerance_ulps
        n_bad = int(bad.sum())
        if not n_bad:
            continue
        out.mismatches += n_bad
        for k, count in enumerate(flipped_bit_histogram(a_bits[bad], r_bits[bad], w)):
            hist[k] += count
        if not out.detail:
            i = int(np.flatnonzero(bad)[0])
            where = np.unravel_index(i, r.shape) if r.shape else ()
            x_val, r_val = np.asarray(a.array).reshape(-1)[i], np.asarray(r.array).reshape(-1)[i]
            out.detail = (
                f"{r.display_path}{list(map(int, where))}: {x_val!r} != {r_val!r} "
                f"({dev[i]:.3g} {'ulps' if _is_float(a) else 'abs'})"
            )
    return out


def median_reference(outputs: Sequence[Canonical]) -> tuple[Leaf, ...]:
    """The elementwise lower median of outputs of one structure (each element a real value).

    Example:
        >>> outs = [canonicalize(np.array([v, 1.0])) for v in (3.0, 1.0, 2.0, 9.0)]
        >>> median_reference(outs)[0].array.tolist()
        [2.0, 1.0]
    """
    if not outputs:
        raise ValueError("median_reference needs at least one output")
    k = (len(outputs) - 1) // 2
    leaves = []
    for j, first in enumerate(outputs[0].leaves):
        stack = np.stack([np.asarray(o.leaves[j].array).reshape(-1) for o in outputs])
        med = np.partition(stack, k, axis=0)[k] if stack.shape[1] else stack[0]
        leaves.append(Leaf(first.path, first.dtype, first.shape, med.reshape(first.shape)))
    return tuple(leaves)


def calibrate_tolerance(
    spreads: Iterable[float], *, factor: float = SPREAD_FACTOR, floor: float = MIN_TOLERANCE_ULPS
) -> float:
    """The tolerance (scaled ulps) calibrated from the devices' spreads around the median.

    ``max(floor, factor * lower median of the spreads)``: a minority of wild devices cannot
    move it.

    Example:
        >>> calibrate_tolerance([1.0, 1.5, 2.0, 1e30])
        6.0
        >>> calibrate_tolerance([0.0, 0.0, 0.0])
        2.0
    """
    s = sorted(spreads)
    if not s:
        return floor
    return max(floor, factor * s[(len(s) - 1) // 2])


def _float_spread(actual: Canonical, reference: Sequence[Leaf]) -> float:
    devs = [_deviation(a, r) for a, r in zip(actual.leaves, reference) if _is_float(a)]
    return max((float(d.max()) for d in devs if d.size), default=0.0)


# -- judging one run --------------------------------------------------------------------------


@dataclasses.dataclass
class RunJudgement:
    """The judgement of one device's output for one kernel case and one repeat.

    Attributes:
        status: ``ok``, ``mismatch``, ``disputed`` (two peers differ, nobody can tell which is
            wrong) or ``unjudged`` (no known answer and no peer of the same model).
        reference: ``known``, ``majority`` (bitwise majority), ``median``, ``peer`` or ``none``.
        expected_digest: Hex digest of the reference (``median:...`` for a median reference).
        actual_digest: Hex digest of the device's output.
        diff: How it differs from the reference (``None`` when nothing was compared).
        tolerance_ulps: The tolerance applied (``0`` for bitwise comparisons).
    """

    status: str
    reference: str
    expected_digest: str
    actual_digest: str
    diff: Diff | None
    tolerance_ulps: float = 0.0


def _hex(c: Canonical) -> str:
    return digest_canonical(c).hex()


def _ref_digest(leaves: Sequence[Leaf]) -> str:
    h = blake3.blake3(derive_key_context="bft-ray sdc median reference")
    for leaf in leaves:
        h.update(f"{leaf.path}\x00{leaf.dtype}\x00{leaf.shape}\x00".encode())
        h.update(np.ascontiguousarray(leaf.array).tobytes())
    return "median:" + h.hexdigest()


def _no_diff(c: Canonical) -> Diff:
    return Diff(elements=sum(int(leaf.array.size) for leaf in c.leaves))


def judge_run(
    outputs: Mapping[int, Canonical],
    groups: Mapping[int, str],
    known: Canonical | None = None,
) -> dict[int, RunJudgement]:
    """Judge every device's output of one kernel case and repeat (rules: module docstring).

    Args:
        outputs: Device index -> its admitted output (devices without one are left out).
        groups: Device index -> model key (see :func:`model_key`); majorities form per model.
        known: The exact known answer, if the case has one.

    Returns:
        Device index -> :class:`RunJudgement`.

    Example:
        >>> a, b = canonicalize(np.int64(5)), canonicalize(np.int64(7))
        >>> j = judge_run({0: a, 1: b}, {0: "m", 1: "m"}, known=a)
        >>> j[0].status, j[1].status, j[1].reference
        ('ok', 'mismatch', 'known')
        >>> judge_run({0: a, 1: b}, {0: "m", 1: "m"})[0].status   # two peers differ
        'disputed'
    """
    result: dict[int, RunJudgement] = {}
    if known is not None:
        expected = _hex(known)
        for d, out in outputs.items():
            actual = _hex(out)
            if actual == expected:
                result[d] = RunJudgement("ok", "known", expected, actual, _no_diff(out))
            else:
                result[d] = RunJudgement("mismatch", "known", expected, actual, compare(out, known))
        return result
    by_model: dict[str, list[int]] = collections.defaultdict(list)
    for d in sorted(outputs):
        by_model[groups.get(d, "?")].append(d)
    for members in by_model.values():
        result.update(_judge_group({d: outputs[d] for d in members}))
    return result


def _judge_group(outs: dict[int, Canonical]) -> dict[int, RunJudgement]:
    n = len(outs)
    digests = {d: _hex(c) for d, c in outs.items()}
    if n == 1:  # nobody to compare with, and no known answer
        d = next(iter(outs))
        return {d: RunJudgement("unjudged", "none", "", digests[d], None)}
    top, count = collections.Counter(digests.values()).most_common(1)[0]
    if count * 2 > n:  # a strict bitwise majority: exact comparisons against it
        ref = next(outs[d] for d in outs if digests[d] == top)
        return {
            d: RunJudgement("ok", "majority", top, digests[d], _no_diff(c))
            if digests[d] == top
            else RunJudgement("mismatch", "majority", top, digests[d], compare(c, ref))
            for d, c in outs.items()
        }
    layouts = {d: repr(_layout(c.leaves)) for d, c in outs.items()}
    main_layout, main_count = collections.Counter(layouts.values()).most_common(1)[0]
    if main_count * 2 <= n:
        why = Diff(detail="no majority of one output structure", structural=True)
        return {d: RunJudgement("disputed", "none", "", digests[d], why) for d in outs}
    same = {d: c for d, c in outs.items() if layouts[d] == main_layout}
    result: dict[int, RunJudgement] = {}
    if len(same) == 2:  # a pair: agree within the floor tolerance, or nobody can tell
        (da, a), (db, b) = same.items()
        for d, x, y, other in ((da, a, b, db), (db, b, a, da)):
            diff = compare(x, y, MIN_TOLERANCE_ULPS)
            status = "disputed" if compare(a, b, MIN_TOLERANCE_ULPS).mismatches else "ok"
            result[d] = RunJudgement(
                status, "peer", digests[other], digests[d], diff, MIN_TOLERANCE_ULPS
            )
        ref: Canonical | tuple[Leaf, ...] = a
        ref_digest, tolerance = digests[da], MIN_TOLERANCE_ULPS
    else:  # three or more: the elementwise median and a tolerance calibrated from the spread
        ref = median_reference(list(same.values()))
        ref_digest = _ref_digest(ref)
        tolerance = calibrate_tolerance(_float_spread(c, ref) for c in same.values())
        for d, c in same.items():
            if not math.isfinite(tolerance):
                diff = compare(c, ref, math.inf)
                diff.detail = diff.detail or "no consensus: most devices deviate without bound"
                result[d] = RunJudgement(
                    "disputed", "median", ref_digest, digests[d], diff, tolerance
                )
                continue
            diff = compare(c, ref, tolerance)
            status = "mismatch" if diff.mismatches else "ok"
            result[d] = RunJudgement(status, "median", ref_digest, digests[d], diff, tolerance)
    for d, c in outs.items():  # a minority with another structure, dtype or shape
        if d not in same:
            result[d] = RunJudgement(
                "mismatch", "majority", ref_digest, digests[d], compare(c, ref), tolerance
            )
    return result


# -- per device results and verdicts --------------------------------------------------------------


def _num_out(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def _num_in(x: Any) -> float:
    return float(x)


@dataclasses.dataclass
class CaseResult:
    """Everything one device did for one kernel case, over all repeats.

    Attributes:
        kernel: Kernel name.
        dtype: Compute dtype.
        exact: Judged against a known answer.
        runs: Runs attempted (one per repeat).
        ok_runs: Runs that matched.
        mismatched_runs: Runs with at least one mismatching element.
        disputed_runs: Runs where a peer disagreed and nobody could say who was right.
        unjudged_runs: Runs without a known answer or a peer.
        error_runs: Runs that failed loudly (kernel raised, executor crashed or stalled).
        invalid_runs: Answers that failed admission (corrupt or forged signed bytes).
        elements: Output elements per run.
        mismatching_elements: Mismatching elements summed over the runs.
        max_mismatching_elements: Mismatching elements of the worst run.
        max_dev_ulps: Largest deviation from the reference over the judged runs.
        tolerance_ulps: Largest tolerance applied (``0``: bitwise).
        references: Kinds of reference used (``known``, ``majority``, ``median``, ...).
        expected_digest: Reference digest of the first mismatching run (else the last run).
        actual_digest: The device's digest of that run.
        bit_histogram: Flipped bit positions over all mismatching elements, LSB first.
        mismatch_repeats: Repeats (0-based) in which the device mismatched.
        notes: The first mismatching elements and failure reasons (at most 5).

    Example:
        >>> r = CaseResult("gemm", "float16", runs=3, ok_runs=2, mismatched_runs=1)
        >>> r.id, r.reproduced, r.status
        ('gemm/float16', '1/3', 'mismatch')
    """

    kernel: str
    dtype: str
    exact: bool = False
    runs: int = 0
    ok_runs: int = 0
    mismatched_runs: int = 0
    disputed_runs: int = 0
    unjudged_runs: int = 0
    error_runs: int = 0
    invalid_runs: int = 0
    elements: int = 0
    mismatching_elements: int = 0
    max_mismatching_elements: int = 0
    max_dev_ulps: float = 0.0
    tolerance_ulps: float = 0.0
    references: list[str] = dataclasses.field(default_factory=list)
    expected_digest: str = ""
    actual_digest: str = ""
    bit_histogram: list[int] = dataclasses.field(default_factory=list)
    mismatch_repeats: list[int] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.kernel}/{self.dtype}"

    @property
    def judged_runs(self) -> int:
        """Runs compared with a reference (matched, mismatched or disputed)."""
        return self.ok_runs + self.mismatched_runs + self.disputed_runs

    @property
    def reproduced(self) -> str:
        """How often the mismatch showed: mismatching runs / judged runs."""
        return f"{self.mismatched_runs}/{self.judged_runs}"

    @property
    def status(self) -> str:
        """``mismatch``, ``invalid``, ``error``, ``disputed``, ``unjudged`` or ``ok``."""
        for name, n in (
            ("mismatch", self.mismatched_runs),
            ("invalid", self.invalid_runs),
            ("error", self.error_runs),
            ("disputed", self.disputed_runs),
        ):
            if n:
                return name
        return "unjudged" if self.runs and not self.judged_runs else "ok"

    def _note(self, text: str) -> None:
        if text and len(self.notes) < 5:
            self.notes.append(text[:300])

    def add(self, j: RunJudgement, repeat: int) -> None:
        """Fold one run's judgement in."""
        self.runs += 1
        if j.reference not in self.references:
            self.references.append(j.reference)
        self.tolerance_ulps = max(self.tolerance_ulps, j.tolerance_ulps)
        if j.diff is not None:
            self.elements = j.diff.elements
            if j.status != "unjudged":
                self.max_dev_ulps = max(self.max_dev_ulps, j.diff.max_dev_ulps)
        first_bad = not self.mismatched_runs
        if j.status == "ok":
            self.ok_runs += 1
        elif j.status == "mismatch":
            self.mismatched_runs += 1
            self.mismatch_repeats.append(repeat)
            diff = j.diff or Diff()
            self.mismatching_elements += diff.mismatches
            self.max_mismatching_elements = max(self.max_mismatching_elements, diff.mismatches)
            if len(self.bit_histogram) < len(diff.bit_histogram):
                self.bit_histogram += [0] * (len(diff.bit_histogram) - len(self.bit_histogram))
            for k, count in enumerate(diff.bit_histogram):
                self.bit_histogram[k] += count
            self._note(f"repeat {repeat}: {diff.mismatches} elements, first {diff.detail}")
        elif j.status == "disputed":
            self.disputed_runs += 1
            self._note(f"repeat {repeat}: disputed ({j.diff.detail if j.diff else ''})")
        else:
            self.unjudged_runs += 1
        if (j.status == "mismatch" and first_bad) or not self.mismatched_runs:
            self.expected_digest, self.actual_digest = j.expected_digest, j.actual_digest

    def add_failure(self, kind: str, reason: str, repeat: int) -> None:
        """Fold in a run without an admissible output (``error`` or ``invalid``)."""
        self.runs += 1
        if kind == "invalid":
            self.invalid_runs += 1
        else:
            self.error_runs += 1
        self._note(f"repeat {repeat}: {kind}: {reason}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["max_dev_ulps"] = _num_out(self.max_dev_ulps)
        d["tolerance_ulps"] = _num_out(self.tolerance_ulps)
        d.update(id=self.id, reproduced=self.reproduced, status=self.status)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CaseResult:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["max_dev_ulps"] = _num_in(kw.get("max_dev_ulps", 0.0))
        kw["tolerance_ulps"] = _num_in(kw.get("tolerance_ulps", 0.0))
        return cls(**kw)


def classify(cases: Sequence[CaseResult]) -> tuple[str, list[str]]:
    """A device's verdict and the reasons, from its case results (rules: module docstring).

    Example:
        >>> ok = CaseResult("gemm", "float32", runs=2, ok_runs=2)
        >>> classify([ok])
        ('healthy', [])
        >>> once = CaseResult("gemm", "float16", runs=2, ok_runs=1, mismatched_runs=1)
        >>> classify([ok, once])[0]
        'suspect'
        >>> exact = CaseResult("igemm", "int8", exact=True, runs=2, ok_runs=1, mismatched_runs=1)
        >>> classify([ok, exact])
        ('faulty', ['igemm/int8 differs from the exact known answer in 1/2 runs'])
    """
    faulty: list[str] = []
    suspect: list[str] = []
    for c in cases:
        if c.exact and c.mismatched_runs:
            faulty.append(f"{c.id} differs from the exact known answer in {c.reproduced} runs")
        if c.invalid_runs:
            faulty.append(f"{c.id}: {c.invalid_runs} answers failed admission")
        if c.error_runs:
            suspect.append(f"{c.id}: {c.error_runs} runs failed")
        if c.disputed_runs:
            suspect.append(f"{c.id}: {c.disputed_runs} runs disputed with a peer")
    bad = [c for c in cases if c.mismatched_runs]
    runs = sum(c.mismatched_runs for c in bad)
    listing = ", ".join(f"{c.id} {c.reproduced}" for c in bad)
    if runs >= FAULTY_MIN_MISMATCH_RUNS:
        faulty.append(f"mismatched in {runs} runs ({listing})")
    elif runs:
        suspect.append(f"mismatched once ({listing}), not reproduced")
    if faulty:
        return "faulty", faulty
    if suspect:
        return "suspect", suspect
    return "healthy", []


def quarantine_advice(verdict: str, slot: str, node: str, device: str) -> str:
    """What an operator should do with a device of this verdict.

    Example:
        >>> quarantine_advice("faulty", "slot2", "10.0.0.7", "GPU-1234")
        'quarantine slot2 on 10.0.0.7 (GPU-1234): drain it, remove it from the pool, rerun --level long before returning it to service'
    """
    if verdict == "faulty":
        return (
            f"quarantine {slot} on {node} ({device}): drain it, remove it from the pool, "
            "rerun --level long before returning it to service"
        )
    if verdict == "suspect":
        return f"watch {slot}: rerun --level long --repeat 10 on it; quarantine if it reproduces"
    return "none"


@dataclasses.dataclass
class DeviceReport:
    """One executor's device, what it computed and the verdict.

    Attributes:
        index: Executor slot index.
        slot: Slot name (``slot2``).
        executor_id: The executor incarnation that ran the suite.
        node_id: Ray node id (from the control plane).
        node_ip: The node's address (from the control plane).
        hostname: Hostname the executor reported (untrusted).
        device: ``cuda`` or ``cpu`` (reported).
        name: GPU or CPU model (reported).
        model: The group the device was judged in (:func:`model_key`).
        uuid: GPU UUID (CUDA only).
        pci_bus_id: PCI bus id (CUDA only).
        injected_fault: The fault behaviour injected into the slot (tests and demos).
        cases: One :class:`CaseResult` per kernel case.
        verdict: ``healthy``, ``suspect`` or ``faulty``.
        reasons: Why the verdict is not healthy.
        quarantine: The suggested action.
    """

    index: int
    slot: str
    executor_id: str = ""
    node_id: str = ""
    node_ip: str = ""
    hostname: str = ""
    device: str = ""
    name: str = ""
    model: str = ""
    uuid: str = ""
    pci_bus_id: str = ""
    injected_fault: str = ""
    cases: list[CaseResult] = dataclasses.field(default_factory=list)
    verdict: str = "healthy"
    reasons: list[str] = dataclasses.field(default_factory=list)
    quarantine: str = "none"

    def judge(self) -> None:
        """Set :attr:`verdict`, :attr:`reasons` and :attr:`quarantine` from the cases."""
        self.verdict, self.reasons = classify(self.cases)
        label = self.uuid or (self.pci_bus_id and f"PCI {self.pci_bus_id}") or self.device or "?"
        self.quarantine = quarantine_advice(
            self.verdict, self.slot, self.node_ip or self.hostname or self.node_id[:12], label
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cases"] = [c.to_dict() for c in self.cases]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeviceReport:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["cases"] = [CaseResult.from_dict(c) for c in d.get("cases", [])]
        return cls(**kw)


_STYLE = {"healthy": "green", "suspect": "yellow", "faulty": "bold red"}


def _bits_text(hist: Sequence[int], top: int = 4) -> str:
    ranked = sorted(((n, k) for k, n in enumerate(hist) if n), reverse=True)[:top]
    return " ".join(f"b{k}x{n}" for n, k in ranked) or "-"


def _fmt_dev(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x:.3g}"


@dataclasses.dataclass
class SdcReport:
    """The result of one SDC check.

    Attributes:
        level: Suite level.
        repeat: Repeats of every kernel.
        suite: The kernel cases (``KernelCase.to_dict``).
        devices: One :class:`DeviceReport` per executor checked.
        started: When the check started (UTC, ISO 8601).
        duration_s: Wall time of the check.
        thresholds: The verdict constants used.
        artifacts: Paths of the files written (``json``, ``png``).

    Example:
        >>> dev = DeviceReport(0, "slot0", cases=[CaseResult("gemm", "float32", runs=1, ok_runs=1)])
        >>> dev.judge()
        >>> r = SdcReport("quick", 1, [], [dev])
        >>> r.healthy, SdcReport.from_json(r.to_json()) == r
        (True, True)
    """

    level: str
    repeat: int
    suite: list[dict[str, Any]]
    devices: list[DeviceReport]
    started: str = ""
    duration_s: float = 0.0
    thresholds: dict[str, float] = dataclasses.field(
        default_factory=lambda: {
            "FAULTY_MIN_MISMATCH_RUNS": FAULTY_MIN_MISMATCH_RUNS,
            "SPREAD_FACTOR": SPREAD_FACTOR,
            "MIN_TOLERANCE_ULPS": MIN_TOLERANCE_ULPS,
        }
    )
    artifacts: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        """Whether every device checked is healthy."""
        return all(d.verdict == "healthy" for d in self.devices)

    def verdicts(self) -> dict[str, str]:
        """Slot name -> verdict."""
        return {d.slot: d.verdict for d in self.devices}

    def device(self, index: int) -> DeviceReport:
        """The report of executor slot ``index``."""
        for d in self.devices:
            if d.index == index:
                return d
        raise KeyError(f"slot {index} was not checked")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite numbers as ``"inf"`` strings)."""
        return {
            "level": self.level,
            "repeat": self.repeat,
            "suite": self.suite,
            "devices": [d.to_dict() for d in self.devices],
            "started": self.started,
            "duration_s": self.duration_s,
            "thresholds": self.thresholds,
            "artifacts": self.artifacts,
            "summary": {v: sum(d.verdict == v for d in self.devices) for v in VERDICTS},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SdcReport:
        return cls(
            level=d["level"],
            repeat=int(d["repeat"]),
            suite=list(d.get("suite", [])),
            devices=[DeviceReport.from_dict(x) for x in d.get("devices", [])],
            started=d.get("started", ""),
            duration_s=float(d.get("duration_s", 0.0)),
            thresholds=dict(d.get("thresholds", {})),
            artifacts=dict(d.get("artifacts", {})),
        )

    def to_json(self, indent: int | None = 2) -> str:
        """The report as strict JSON (no NaN or Infinity literals)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> SdcReport:
        return cls.from_dict(json.loads(text))

    # -- rendering ----------------------------------------------------------------------------

    def tables(self) -> list[Any]:
        """Rich tables: one line per device, then one per kernel case that did not match."""
        from rich.table import Table

        counts = {v: sum(d.verdict == v for d in self.devices) for v in VERDICTS}
        title = (
            f"SDC check ({self.level}, {self.repeat} repeats, {len(self.suite)} kernels, "
            f"{len(self.devices)} devices, {self.duration_s:.1f}s): "
            + ", ".join(f"{n} {v}" for v, n in counts.items())
        )
        summary = Table(title=title, title_justify="left")
        for col in ("slot", "node", "device", "UUID / PCI", "verdict", "findings", "suggestion"):
            summary.add_column(col, overflow="fold")
        for d in self.devices:
            style = _STYLE.get(d.verdict, "")
            ident = " ".join(x for x in (d.uuid, d.pci_bus_id) if x) or "-"
            summary.add_row(
                d.slot,
                d.node_ip or d.hostname or d.node_id[:12],
                d.name if d.device != "cpu" else f"cpu ({d.name})",
                ident,
                f"[{style}]{d.verdict}[/]" if style else d.verdict,
                "; ".join(d.reasons) or "all kernels match",
                d.quarantine,
            )
        detail = Table(title="kernel runs that did not match", title_justify="left")
        for col in (
            "slot",
            "kernel",
            "dtype",
            "reference",
            "reproduced",
            "bad elements",
            "max dev",
            "flipped bits",
            "expected",
            "actual",
        ):
            detail.add_column(col, overflow="fold")
        for d in self.devices:
            for c in d.cases:
                if c.status in ("ok", "unjudged"):
                    continue
                detail.add_row(
                    d.slot,
                    c.kernel,
                    c.dtype,
                    "/".join(c.references) or "-",
                    c.reproduced if c.judged_runs else f"{c.status} {c.runs - c.judged_runs}",
                    f"{c.mismatching_elements}/{c.elements * max(c.judged_runs, 1)}",
                    _fmt_dev(c.max_dev_ulps),
                    _bits_text(c.bit_histogram),
                    c.expected_digest.removeprefix("median:")[:12] or "-",
                    c.actual_digest[:12] or "-",
                )
        return [summary, detail] if detail.row_count else [summary]

    def print(self, console: Any = None) -> None:
        """Print the tables (and where the JSON and PNG went) to a rich console."""
        from rich.console import Console

        console = console or Console()
        tables = self.tables()
        for table in tables:
            console.print(table)
        if len(tables) == 1:
            console.print("no mismatches: every device matched the known answers and its peers")
        for kind, path in self.artifacts.items():
            console.print(f"{kind}: {path}")

    def heatmap_matrix(self) -> tuple[list[str], list[str], np.ndarray, list[list[str]]]:
        """Rows (devices), columns (kernel cases), mismatch fraction (NaN: nothing judged), labels."""
        cols = [c["id"] for c in self.suite] or sorted(
            {c.id for d in self.devices for c in d.cases}
        )
        rows = [f"{d.slot} {d.node_ip or d.hostname}".strip() for d in self.devices]
        values = np.full((len(rows), len(cols)), np.nan)
        labels = [["" for _ in cols] for _ in rows]
        for i, d in enumerate(self.devices):
            by_id = {c.id: c for c in d.cases}
            for j, cid in enumerate(cols):
                c = by_id.get(cid)
                if c is None:
                    continue
                if c.judged_runs:
                    values[i, j] = c.mismatched_runs / c.judged_runs
                    labels[i][j] = c.reproduced
                failed = c.error_runs + c.invalid_runs
                if failed:
                    labels[i][j] = (labels[i][j] + f" E{failed}").strip()
                elif not c.judged_runs:
                    labels[i][j] = "n/a"
        return rows, cols, values, labels

    def write_heatmap(self, path: str | os.PathLike) -> Path | None:
        """A PNG heatmap of devices by kernel cases: fraction of runs that mismatched.

        Cells read ``mismatching/judged`` runs (``E<n>``: failed runs, ``n/a``: not judged);
        row labels are coloured by verdict. Needs matplotlib; without it, logs and returns
        ``None``.
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            logger.warning("matplotlib is not installed: no heatmap written")
            return None
        import matplotlib

        rows, cols, values, labels = self.heatmap_matrix()
        fig = Figure(figsize=(1.2 + 1.1 * max(len(cols), 1), 1.4 + 0.45 * max(len(rows), 1)))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        cmap = matplotlib.colormaps["RdYlGn_r"].with_extremes(bad="lightgrey")
        im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        colours = {"healthy": "green", "suspect": "darkorange", "faulty": "red"}
        for tick, d in zip(ax.get_yticklabels(), self.devices):
            tick.set_color(colours.get(d.verdict, "black"))
        for i in range(len(rows)):
            for j in range(len(cols)):
                if labels[i][j]:
                    v = values[i, j]
                    dark = math.isfinite(v) and (v < 0.2 or v > 0.8)
                    ax.text(
                        j,
                        i,
                        labels[i][j],
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if dark else "black",
                    )
        ax.set_title(
            f"SDC check ({self.level}, {self.repeat} repeats): mismatching runs per kernel",
            fontsize=9,
        )
        fig.colorbar(im, ax=ax, fraction=0.04, label="fraction of runs mismatched")
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
        return out

    def save(self, out_dir: str | os.PathLike) -> dict[str, str]:
        """Write ``sdc_report.json`` and ``sdc_heatmap.png`` into ``out_dir``; returns the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        png = self.write_heatmap(out / PNG_NAME)
        self.artifacts = {"json": str(out / JSON_NAME)}
        if png is not None:
            self.artifacts["png"] = str(png)
        (out / JSON_NAME).write_text(self.to_json())
        return dict(self.artifacts)


# -- fault injection for demos and tests -----------------------------------------------------


class KernelFault(fault_lib.Behaviour):
    """Apply a behaviour only to the SDC check's runs of some kernels (demos and tests).

    Args:
        inner: Any fault spec (:func:`bft_ray.faults.resolve`).
        kernels: Kernel names (``gemm``) or cases (``gemm/float16``) it applies to.

    Example:
        >>> f = KernelFault("zeros", ["gemm"])
        >>> ctx = fault_lib.FaultContext(2, "sdc:gemm:float32:r0:slot2", 0)
        >>> f.corrupt(np.ones(2), ctx).tolist(), f
        ([0.0, 0.0], zeros@gemm)
        >>> f.corrupt(np.ones(2), fault_lib.FaultContext(2, "sdc:reduce:int64:r0:slot2", 0)).tolist()
        [1.0, 1.0]
    """

    name = "sdc_kernels"

    def __init__(self, inner: Any, kernels: Iterable[str]) -> None:
        self.inner = fault_lib.resolve(inner)
        self.kernels = tuple(kernels)
        if not self.kernels:
            raise ConfigError("KernelFault needs at least one kernel name")

    def _hit(self, ctx: fault_lib.FaultContext) -> bool:
        parts = ctx.task_id.split(":")
        if len(parts) < 3 or parts[0] != _TASK_PREFIX:
            return False
        return parts[1] in self.kernels or f"{parts[1]}/{parts[2]}" in self.kernels

    def before(self, ctx: fault_lib.FaultContext) -> None:
        if self._hit(ctx):
            self.inner.before(ctx)

    def corrupt(self, output: Any, ctx: fault_lib.FaultContext) -> Any:
        return self.inner.corrupt(output, ctx) if self._hit(ctx) else output

    def on_wire(self, answer: bytes, ctx: fault_lib.FaultContext) -> Any:
        return self.inner.on_wire(answer, ctx) if self._hit(ctx) else answer

    def __repr__(self) -> str:
        return f"{self.inner!r}@{','.join(self.kernels)}"


def parse_inject(text: str) -> tuple[int, fault_lib.Behaviour]:
    """Parse ``INDEX:FAULT[=ARG][@KERNEL[,KERNEL...]]`` (the ``--inject`` flag; demos, tests).

    ``FAULT`` is a name of :mod:`bft_ray.faults`; ``ARG`` its first argument (``intermittent=0.5``
    is ``intermittent(0.5)``, of bit flips; ``bitflip=3`` flips bit 3); ``@gemm`` restricts it
    to some kernels (:class:`KernelFault`).

    Raises:
        ValueError: For anything else, with the expected form.

    Example:
        >>> parse_inject("2:bitflip")
        (2, bitflip)
        >>> parse_inject("1:intermittent=0.5@gemm,igemm")
        (1, intermittent(0.5, bitflip)@gemm,igemm)
    """
    index, sep, rest = text.partition(":")
    if not sep or not index.strip().isdigit() or not rest:
        raise ValueError(f"expected INDEX:FAULT[=ARG][@KERNELS], e.g. 2:bitflip, got {text!r}")
    spec, _, kernels = rest.partition("@")
    name, eq, arg = spec.partition("=")
    name = name.strip()
    if name not in fault_lib.known_faults():
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(fault_lib.known_faults())}")
    factory = getattr(fault_lib, name)
    if eq:
        try:
            value: Any = int(arg) if name in ("bitflip", "crash") else float(arg)
        except ValueError:
            raise ValueError(f"{text!r}: {arg!r} is not a number") from None
        behaviour = factory(value)
    else:
        behaviour = factory()
    if kernels:
        behaviour = KernelFault(behaviour, [k.strip() for k in kernels.split(",") if k.strip()])
    return int(index), behaviour


# -- running the check on a cluster ---------------------------------------------------------------


@dataclasses.dataclass
class _Failure:
    kind: str  # "error" or "invalid"
    reason: str


def _text_leaves(outcome: Any) -> dict[str, str]:
    """A dict of strings from an admitted canonical form, read leaf by leaf (no decoding)."""
    out = {}
    for leaf in outcome.canonical.leaves if outcome.canonical is not None else ():
        if leaf.dtype == "str":
            out[leaf.path] = bytes(np.asarray(leaf.array)).decode("utf-8", "replace")[:200]
    return out


def _node_addresses() -> dict[str, str]:
    import ray

    try:
        return {n["NodeID"]: n.get("NodeManagerAddress", "") for n in ray.nodes()}
    except Exception as exc:
        logger.debug("ray.nodes(): %s", exc)
        return {}


def _outcome_to_result(outcome: Any) -> Canonical | _Failure:
    from bft_ray.verifier.admission import Status, error_record

    if outcome.status is Status.OK:
        return outcome.canonical
    if outcome.status is Status.ERROR:
        record = error_record(outcome.canonical) if outcome.canonical is not None else None
        what = f"{record[0]}: {record[1]}" if record else outcome.reason
        return _Failure("error", f"kernel raised {what}"[:300])
    if outcome.status in (Status.INVALID, Status.MISATTRIBUTED):  # its own ref: a replay
        return _Failure("invalid", outcome.reason[:300])
    return _Failure("error", f"{outcome.status.value}: {outcome.reason}"[:300])


def run_check(
    cluster: Any,
    level: str = "quick",
    repeat: int | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    slots: Iterable[int] | None = None,
    timeout_s: float = 600.0,
    progress: bool = True,
    console: Any = None,
    nonce: str = "",
) -> SdcReport:
    """Run the SDC suite once per executor per repeat and judge every device.

    Each run goes straight to one executor through :meth:`BftCluster.executor_handles`
    (unverified, one replica per device: each device is what is being tested); its signed
    answer envelope is read with :func:`~bft_ray.verifier.admission.admit`. Answers pass
    through the executors' injected fault behaviours, which is how tests inject SDC
    (``cluster.inject_fault(2, faults.intermittent(0.5, "bitflip"))``). Quarantined executors
    are checked too.

    Args:
        cluster: The owner's :class:`~bft_ray.BftCluster` handle (steering executors needs it).
        level: ``quick``, ``standard`` or ``long`` (see :func:`suite`).
        repeat: Runs of every kernel per device (default :data:`DEFAULT_REPEAT` of the level).
        out_dir: Where to write ``sdc_report.json`` and ``sdc_heatmap.png`` (``None``: nowhere).
        slots: Executor slot indices to check (default: all).
        timeout_s: An executor that answers nothing for this long is declared stalled: its
            outstanding runs count as failed and it gets no more.
        progress: Show a rich progress bar.
        console: The rich console for the progress bar.
        nonce: Appended to task ids (fault behaviours seed on them): ``""`` replays exactly.

    Returns:
        The :class:`SdcReport`.

    Raises:
        ConfigError: For a bad level, repeat or slot selection.
        CapabilityError: When ``cluster`` is an attached handle, not the owner's.

    Example:
        >>> report = run_check(bft_ray.init(executors=4), "quick")  # doctest: +SKIP
        >>> report.verdicts()  # doctest: +SKIP
        {'slot0': 'healthy', 'slot1': 'healthy', 'slot2': 'healthy', 'slot3': 'healthy'}
    """
    import ray

    from bft_ray.executor.actor import TaskSpec
    from bft_ray.executor.guard import no_answer
    from bft_ray.verifier.admission import Expected, Status, admit

    if level not in LEVELS:
        raise ConfigError(f"unknown level {level!r}; levels: {', '.join(LEVELS)}")
    repeat = DEFAULT_REPEAT[level] if repeat is None else repeat
    if not isinstance(repeat, int) or repeat < 1:
        raise ConfigError(f"repeat={repeat!r}: run every kernel at least once")
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    entries = cluster.executor_handles(include_quarantined=True)
    if slots is not None:
        wanted = set(slots)
        entries = [e for e in entries if e["index"] in wanted]
        missing = wanted - {e["index"] for e in entries}
        if missing:
            raise ConfigError(f"no executor in service at slots {sorted(missing)}")
    if not entries:
        raise ConfigError("no executor in service to check")
    by_index = {e["index"]: e for e in entries}
    tail = f":{nonce}" if nonce else ""

    def expected(e: dict[str, Any], spec: Any) -> Any:
        return Expected(spec.task_id, spec.attempt, e["executor_id"], e["slot"], e["public_key"])

    def read(ref: Any, e: dict[str, Any], spec: Any) -> Any:
        try:
            raw: Any = ray.get(ref, timeout=timeout_s)
        except Exception as exc:
            raw = no_answer(exc)
        return admit(raw, expected(e, spec))

    # What each device says it is (a signed answer like any other).
    info_specs = {
        i: TaskSpec(f"{_TASK_PREFIX}:info:{e['slot']}{tail}", 0, "sdc.device_info")
        for i, e in by_index.items()
    }
    info_refs = {
        i: e["handle"].run.remote(e["capability"], info_specs[i], _INFO_KEY, device_info)
        for i, e in by_index.items()
    }
    infos: dict[int, dict[str, str]] = {}
    for i, ref in info_refs.items():
        outcome = read(ref, by_index[i], info_specs[i])
        if outcome.status is Status.OK:
            infos[i] = _text_leaves(outcome)
        else:
            infos[i] = {"error": f"{outcome.status.value}: {outcome.reason}", "slot": str(i)}
            logger.warning("slot %d: no device info (%s)", i, infos[i]["error"])
    groups = {i: model_key(info) for i, info in infos.items()}
    ips = _node_addresses()

    cases = suite(level)
    input_refs: dict[str, Any] = {}
    known: dict[str, Canonical | None] = {}
    for case in cases:
        inputs = make_inputs(case)
        known[case.id] = known_answer(case, inputs)
        input_refs[case.id] = ray.put(inputs)

    results = {i: {c.id: CaseResult(c.kernel, c.dtype, c.exact) for c in cases} for i in by_index}
    queues = {i: collections.deque((r, c) for r in range(repeat) for c in cases) for i in by_index}
    buckets: dict[tuple[str, int], dict[int, Canonical | _Failure]] = collections.defaultdict(dict)
    in_flight: dict[Any, tuple[int, KernelCase, int, Any]] = {}
    last_answer = {i: time.monotonic() for i in by_index}
    window = len(cases)
    total = len(by_index) * repeat * len(cases)
    done = 0

    def submit(i: int) -> None:
        e = by_index[i]
        while queues[i] and sum(1 for v in in_flight.values() if v[0] == i) < window:
            r, case = queues[i].popleft()
            spec = TaskSpec(
                f"{_TASK_PREFIX}:{case.kernel}:{case.dtype}:r{r}:{e['slot']}{tail}",
                0,
                f"sdc.{case.id}",
            )
            ref = e["handle"].run.remote(
                e["capability"], spec, _FN_KEY, execute_case, case, input_refs[case.id]
            )
            in_flight[ref] = (i, case, r, spec)

    def settle(case: KernelCase, r: int) -> None:
        bucket = buckets[(case.id, r)]
        if len(bucket) < len(by_index):
            return
        del buckets[(case.id, r)]
        outputs = {i: v for i, v in bucket.items() if isinstance(v, Canonical)}
        judged = judge_run(outputs, groups, known[case.id])
        for i, v in bucket.items():
            if isinstance(v, _Failure):
                results[i][case.id].add_failure(v.kind, v.reason, r)
            else:
                results[i][case.id].add(judged[i], r)

    def give_up(i: int, reason: str) -> int:
        """Fail every outstanding and queued run of executor ``i``; returns how many."""
        lost = [(ref, v) for ref, v in in_flight.items() if v[0] == i]
        for ref, _ in lost:
            del in_flight[ref]
        pending = [(c, r) for _, (_, c, r, _) in lost] + [(c, r) for r, c in queues[i]]
        queues[i].clear()
        for c, r in pending:
            buckets[(c.id, r)][i] = _Failure("error", reason)
            settle(c, r)
        return len(pending)

    with progress_bar(f"sdc-check {level} runs", total, enabled=progress, console=console) as bar:
        for i in by_index:
            submit(i)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            if ready:
                more, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0)
                ready = list(dict.fromkeys([*ready, *more]))
            for ref in ready:
                if ref not in in_flight:
                    continue
                i, case, r, spec = in_flight.pop(ref)
                last_answer[i] = time.monotonic()
                outcome = read(ref, by_index[i], spec)
                buckets[(case.id, r)][i] = _outcome_to_result(outcome)
                done += 1
                settle(case, r)
                if outcome.status is Status.CRASHED:
                    n = give_up(i, f"not run: the executor died ({outcome.reason})")
                    done += n
                    logger.warning("slot %d died: %s", i, outcome.reason)
                else:
                    submit(i)
            now = time.monotonic()
            for i in {v[0] for v in in_flight.values()}:
                if now - last_answer[i] > timeout_s:
                    done += give_up(i, f"timeout: no answer for {timeout_s:g}s")
                    logger.warning(
                        "slot %d stalled for %.0fs: its runs count as failed",
                        i,
                        now - last_answer[i],
                    )
            bar.advance(done - bar.completed)

    devices = []
    for i, e in sorted(by_index.items()):
        info = infos[i]
        dev = DeviceReport(
            index=i,
            slot=e["slot"],
            executor_id=e["executor_id"],
            node_id=e["node_id"],
            node_ip=ips.get(e["node_id"], ""),
            hostname=info.get("hostname", ""),
            device=info.get("device", "?"),
            name=info.get("name", info.get("error", "?")),
            model=groups[i],
            uuid=info.get("uuid", ""),
            pci_bus_id=info.get("pci_bus_id", ""),
            injected_fault=str(e.get("fault", "")),
            cases=[results[i][c.id] for c in cases],
        )
        dev.judge()
        devices.append(dev)
    report = SdcReport(
        level=level,
        repeat=repeat,
        suite=[c.to_dict() for c in cases],
        devices=devices,
        started=started.isoformat(timespec="seconds"),
        duration_s=round(time.monotonic() - t0, 3),
    )
    for d in devices:
        if d.verdict != "healthy":
            logger.warning("%s is %s: %s", d.slot, d.verdict, "; ".join(d.reasons))
    if out_dir is not None:
        report.save(out_dir)
    return report


# -- entry points ------------------------------------------------------------------------------


def start_cluster(
    address: str | None = None,
    executors: int | None = None,
    *,
    inject: Iterable[tuple[int, Any]] = (),
    ready_timeout_s: float = 300.0,
) -> Any:
    """Start the check's own bft-ray pool: one executor per GPU, or CPU executors without GPUs.

    Joins ``address`` (or ``RAY_ADDRESS``, as under ``ray job submit``); otherwise starts a
    local Ray through :func:`bft_ray.init` (without GPUs it declares one logical GPU per
    executor and the kernels run on the CPU). The pool gets a name of its own, so the check
    owns its executors even where another bft-ray cluster runs.

    Args:
        address: Ray address to join (default ``RAY_ADDRESS``, else a local Ray).
        executors: Devices to check (default: every GPU of the cluster, else
            ``DEFAULT_CPU_EXECUTORS`` CPU executors).
        inject: ``(slot, behaviour)`` faults to inject (demos and tests; see
            :func:`parse_inject`).
        ready_timeout_s: How long to wait for the executors' resources on a joined cluster.

    Raises:
        ConfigError: When the cluster cannot hold the executors, saying what it has.
    """
    import ray

    import bft_ray
    from bft_ray.executor.pool import local_gpu_count

    name = f"sdc-check-{os.getpid()}-{os.urandom(3).hex()}"
    target = address or os.environ.get("RAY_ADDRESS")
    if target or ray.is_initialized():
        if not ray.is_initialized():
            ray.init(address=target, log_to_driver=False)
        total, free = ray.cluster_resources(), ray.available_resources()
        gpus = int(total.get("GPU", 0))
        n = executors or gpus or DEFAULT_CPU_EXECUTORS
        if gpus and free.get("GPU", 0) < n:
            raise ConfigError(
                f"{n} executors need {n} free GPUs (one each) but the cluster has {gpus} "
                f"({free.get('GPU', 0):g} free): check fewer with --executors, or free GPUs."
            )
        cpus = min(1.0, math.floor(100 * free.get("CPU", 0) / n) / 100)
        if cpus <= 0:
            raise ConfigError(f"{n} executors need free CPUs; the cluster has none free")
        cluster = bft_ray.init(
            executors=n,
            gpus_per_executor=1.0 if gpus else 0.0,
            cpus_per_executor=cpus,
            name=name,
            ready_timeout_s=ready_timeout_s,
        )
    else:
        present = local_gpu_count()
        n = executors or present or DEFAULT_CPU_EXECUTORS
        if 0 < present < n:
            raise ConfigError(f"{n} executors need {n} GPUs (one each); this machine has {present}")
        cluster = bft_ray.init(
            executors=n,
            name=name,
            num_cpus=max(n + 2, os.cpu_count() or 1),
            object_store_memory=512 * 1024**2,
            include_dashboard=False,
            log_to_driver=False,
        )
    for index, behaviour in inject:
        logger.warning("fault injection (demo/test): slot %d behaves as %r", index, behaviour)
        cluster.inject_fault(index, behaviour)
    return cluster


def check_main(
    *,
    address: str | None = None,
    level: str = "quick",
    repeat: int | None = None,
    executors: int | None = None,
    out: str | os.PathLike | None = DEFAULT_OUT,
    as_json: bool = False,
    inject: Iterable[tuple[int, Any]] = (),
    timeout_s: float = 600.0,
) -> int:
    """Start a pool, run the check, print it; the exit status: 0 all healthy, 1 otherwise.

    Shared by ``bft-ray sdc-check`` and ``jobs/sdc_check.py``. With ``as_json`` the report
    goes to stdout as JSON and the progress bar to stderr. A configuration error prints its
    message and returns 2.
    """
    from rich.console import Console

    width = None if os.isatty(1) else 160
    console = Console(stderr=True) if as_json else Console(width=width)
    inject = list(inject)
    try:
        cluster = start_cluster(address, executors, inject=inject)
    except ConfigError as exc:
        console.print(f"[red]sdc-check: {exc}[/]")
        return 2
    try:
        if inject:
            console.print(
                "injected faults (demo/test): " + ", ".join(f"slot{i}={b!r}" for i, b in inject)
            )
        report = run_check(
            cluster, level, repeat, out, timeout_s=timeout_s, console=console, progress=True
        )
    finally:
        cluster.shutdown()
    if as_json:
        click.echo(report.to_json())
    else:
        report.print(console)
    return 0 if report.healthy else 1


def _inject_option(ctx: click.Context, param: click.Parameter, value: Any) -> list:
    try:
        return [parse_inject(v) for v in value]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("sdc-check")
@click.option(
    "--address", default=None, help="Ray address to join (default: RAY_ADDRESS, else a local Ray)."
)
@click.option("--level", type=click.Choice(LEVELS), default="quick", show_default=True)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=None,
    help="Runs of every kernel per device (default: quick 2, standard 3, long 10).",
)
@click.option(
    "--executors",
    type=click.IntRange(min=1),
    default=None,
    help="Devices to check (default: one executor per GPU, or 4 CPU executors without GPUs).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=DEFAULT_OUT,
    show_default=True,
    help="Directory of sdc_report.json and sdc_heatmap.png.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
@click.option(
    "--inject",
    multiple=True,
    callback=_inject_option,
    metavar="INDEX:FAULT[=ARG][@KERNELS]",
    help="Demo/test only: inject a fault, e.g. 2:bitflip or 1:intermittent=0.5@gemm.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds without an answer before an executor counts as stalled.",
)
@click.pass_context
def sdc_check_command(
    ctx: click.Context,
    address: str | None,
    level: str,
    repeat: int | None,
    executors: int | None,
    out: str,
    as_json: bool,
    inject: list,
    timeout_s: float,
) -> None:
    """Silent-data-corruption check of every executor's device; exits 1 unless all healthy.

    Runs integer, fp32, fp16 and bf16 GEMMs, reductions and a transformer block (forward and
    backward) on every device, judges each against the known answer or the majority of its
    model, and prints a table per device (JSON and a PNG heatmap go to --out).
    """
    ctx.exit(
        check_main(
            address=address,
            level=level,
            repeat=repeat,
            executors=executors,
            out=out,
            as_json=as_json,
            inject=inject,
            timeout_s=timeout_s,
        )
    )
