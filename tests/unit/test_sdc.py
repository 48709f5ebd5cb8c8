"""The SDC check's pure part: suite, known answers, judging, calibration, bit-flip histograms,
verdict thresholds, JSON round-trip, tables and the heatmap (no Ray)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

from bft_ray import faults, sdc
from bft_ray.compare.canonical import canonicalize


def flip(arr: np.ndarray, index: int, bit: int) -> np.ndarray:
    out = np.array(arr, copy=True)
    flat = out.reshape(-1).view(np.dtype(f"u{out.dtype.itemsize}"))
    flat[index] ^= np.array(1 << bit, dtype=flat.dtype)
    return out


def canon(arr: np.ndarray) -> object:
    return canonicalize({"y": arr})


GROUP4 = {i: "m" for i in range(4)}


# -- suite and kernels ---------------------------------------------------------------------------


def test_suite_levels_have_fixed_seeds_and_growing_sizes():
    quick, standard, long = (sdc.suite(lv) for lv in sdc.LEVELS)
    assert [c.id for c in quick][:4] == [
        "igemm/int8",
        "gemm/float32",
        "gemm/float16",
        "gemm/bfloat16",
    ]
    assert {c.id for c in quick} < {c.id for c in standard} == {c.id for c in long}
    assert sdc.suite("quick") == quick  # deterministic seeds
    assert len({c.seed for c in standard}) == len(standard)
    size = {lv: dict((c.kernel, math.prod(c.shape)) for c in sdc.suite(lv)) for lv in sdc.LEVELS}
    for kernel in size["quick"]:
        assert size["quick"][kernel] < size["standard"][kernel] <= size["long"][kernel]
    assert [c.id for c in quick if c.exact] == ["igemm/int8", "reduce/int64"]
    with pytest.raises(ValueError, match="unknown level"):
        sdc.suite("huge")


@pytest.mark.parametrize("case", sdc.suite("quick"), ids=lambda c: c.id)
def test_every_quick_kernel_runs_on_the_cpu_deterministically(case):
    inputs = sdc.make_inputs(case)
    first = canonicalize(sdc.execute_case(case, inputs))
    again = canonicalize(sdc.execute_case(case, sdc.make_inputs(case)))
    assert first == again  # same seeds, same bits
    known = sdc.known_answer(case, inputs)
    if case.exact:
        assert first == known  # the executor's answer has the known answer's exact bytes
    else:
        assert known is None
    if case.kernel == "transformer":
        paths = {leaf.path for leaf in first.leaves}
        assert {"y", "grad/x", "grad/w_qkv", "grad/w_2"} <= paths
    dtype = {leaf.dtype for leaf in first.leaves}
    want = {"igemm": "torch.int32", "reduce": f"torch.{case.dtype}"}.get(case.kernel)
    assert dtype == {want or f"torch.{case.dtype}"}


def test_float_gemm_is_close_to_a_float64_reference():
    case = next(c for c in sdc.suite("quick") if c.id == "gemm/float32")
    x = sdc.make_inputs(case)
    got = sdc.execute_case(case, x)["c"].numpy()
    np.testing.assert_allclose(got, x["a"].astype(np.float64) @ x["b"], rtol=1e-4, atol=1e-4)


def test_model_key_separates_models_and_software():
    base = {"device": "cuda", "name": "NVIDIA H200", "torch": "2.13", "cuda": "12.8"}
    assert sdc.model_key(base) != sdc.model_key({**base, "name": "NVIDIA H100"})
    assert sdc.model_key(base) != sdc.model_key({**base, "cuda": "12.4"})
    assert sdc.model_key({"error": "crashed", "slot": "3"}).startswith("unknown")
    info = sdc.device_info()
    assert info["device"] == "cpu" and info["uuid"] == "" and info["name"]


# -- bits ---------------------------------------------------------------------------------------


def test_bit_view_widths_and_histogram_positions():
    for dtype, width in ((np.float16, 16), (np.float32, 32), (np.float64, 64), (np.int32, 32)):
        leaf = canonicalize(np.zeros(3, dtype=dtype)).leaves[0]
        bits, w = sdc.bit_view(leaf)
        assert w == width and bits.dtype.itemsize * 8 == width
    bf = canonicalize(torch.tensor([1.0, -2.0], dtype=torch.bfloat16)).leaves[0]
    bits, w = sdc.bit_view(bf)
    assert w == 16 and [hex(int(b)) for b in bits] == ["0x3f80", "0xc000"]
    a = np.array([0b1001, 0, 0b1000], dtype=np.uint8)
    assert sdc.flipped_bit_histogram(a, np.zeros(3, np.uint8), 4) == [1, 0, 0, 2]


def test_histogram_names_the_flipped_bit_in_each_dtype():
    y = np.linspace(1, 2, 16, dtype=np.float32)
    d = sdc.compare(canon(flip(y, 5, 17)), canon(y))
    assert d.mismatches == 1 and d.bit_histogram[17] == 1 and sum(d.bit_histogram) == 1
    assert len(d.bit_histogram) == 32 and "y[5]" in d.detail
    # bf16: positions in bf16's own 16 bits (bit 14 is the top exponent bit)
    t = torch.linspace(1, 2, 8, dtype=torch.bfloat16)
    bad = t.clone()
    bad.view(torch.int16)[3] ^= 1 << 14
    d = sdc.compare(canonicalize({"y": bad}), canonicalize({"y": t}))
    assert len(d.bit_histogram) == 16 and d.bit_histogram[14] == 1
    # fault library's bitflip on an int32 GEMM output: bit 30
    c = canonicalize({"c": torch.arange(64, dtype=torch.int32)})
    hit = faults.bitflip().corrupt(
        {"c": torch.arange(64, dtype=torch.int32)}, faults.FaultContext(2, "t", 0)
    )
    d = sdc.compare(canonicalize(hit), c)
    assert d.mismatches == 1 and d.bit_histogram[30] == 1


def test_compare_nan_inf_and_structure():
    y = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    nan = y.copy()
    nan[1] = np.nan
    d = sdc.compare(canon(nan), canon(y), tolerance_ulps=1e9)
    assert d.mismatches == 1 and d.max_dev_ulps == math.inf
    assert sdc.compare(canon(nan), canon(nan)).mismatches == 0  # same bits
    d = sdc.compare(canon(y.astype(np.float64)), canon(y))
    assert d.structural and d.mismatches == 3 and "structure" in d.detail


# -- judging ------------------------------------------------------------------------------------


def test_known_answer_decides_alone_even_against_a_majority():
    good = canonicalize(np.arange(6, dtype=np.int64))
    bad = canonicalize(np.arange(6, dtype=np.int64) + 1)
    j = sdc.judge_run({0: bad, 1: bad, 2: bad, 3: good}, GROUP4, known=good)
    assert [j[i].status for i in range(4)] == ["mismatch"] * 3 + ["ok"]
    assert j[0].reference == "known" and j[0].diff.mismatches == 6
    assert j[0].expected_digest == j[3].actual_digest != j[0].actual_digest


def test_bitwise_majority_catches_a_single_low_mantissa_flip():
    y = np.linspace(-1, 1, 100, dtype=np.float32)
    outs = {i: canon(y) for i in range(4)}
    outs[2] = canon(flip(y, 42, 0))  # one ulp: only exact comparison can see it
    j = sdc.judge_run(outs, GROUP4)
    assert {i: j[i].status for i in j} == {0: "ok", 1: "ok", 2: "mismatch", 3: "ok"}
    assert j[2].reference == "majority" and j[2].tolerance_ulps == 0
    assert j[2].diff.bit_histogram[0] == 1 and j[2].diff.mismatches == 1


def test_majorities_form_per_model():
    y = np.ones(8, dtype=np.float32)
    other = np.full(8, 1.5, dtype=np.float32)  # another model computes other bits: fine
    outs = {
        0: canon(y),
        1: canon(y),
        2: canon(y),
        3: canon(other),
        4: canon(other),
        5: canon(other),
    }
    groups = {0: "a", 1: "a", 2: "a", 3: "b", 4: "b", 5: "b"}
    assert all(v.status == "ok" for v in sdc.judge_run(outs, groups).values())
    # pooled into one model, nobody has a majority: the median rule applies and splits them
    pooled = sdc.judge_run(outs, {i: "a" for i in outs})
    assert {v.reference for v in pooled.values()} == {"median"}


def test_median_rule_calibrates_the_tolerance_from_the_devices_spread():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(1000).astype(np.float32)
    eps = np.finfo(np.float32).eps
    scale = np.maximum(np.abs(base), np.sqrt(np.mean(base.astype(np.float64) ** 2)))
    outs = {}
    for i in range(5):  # honest devices: all different, within ~3 scaled ulps
        noise = rng.uniform(-3, 3, base.shape) * eps * scale
        outs[i] = canon((base + noise).astype(np.float32))
    wild = np.array(outs[4].leaves[0].array, copy=True)
    wild[17] += 50 * eps * scale[17]  # 50 ulps: beyond the honest spread
    outs[4] = canon(wild)
    j = sdc.judge_run(outs, {i: "m" for i in outs})
    assert {i: j[i].status for i in j} == {0: "ok", 1: "ok", 2: "ok", 3: "ok", 4: "mismatch"}
    tol = j[0].tolerance_ulps
    assert j[0].reference == "median" and sdc.MIN_TOLERANCE_ULPS < tol < 50
    assert j[4].diff.mismatches == 1 and "y[17]" in j[4].diff.detail
    assert j[0].expected_digest.startswith("median:")


def test_calibration_rule():
    assert sdc.calibrate_tolerance([]) == sdc.MIN_TOLERANCE_ULPS
    assert sdc.calibrate_tolerance([0.1, 0.2, 0.3]) == sdc.MIN_TOLERANCE_ULPS
    assert sdc.calibrate_tolerance([3.0, 1.0, 2.0]) == 2.0 * sdc.SPREAD_FACTOR
    # a minority of wild devices cannot loosen it
    assert sdc.calibrate_tolerance([1.0, 1.0, 1.0, 1e30, math.inf]) == sdc.SPREAD_FACTOR
    assert sdc.calibrate_tolerance([1.0, 5.0], factor=2.0, floor=0.5) == 2.0


def test_pairs_singletons_and_structure_outliers():
    y = np.ones(4, dtype=np.float32)
    j = sdc.judge_run({0: canon(y)}, {0: "m"})
    assert j[0].status == "unjudged" and j[0].reference == "none"
    near = np.nextafter(y, np.float32(2))  # one ulp apart: a pair agrees within the floor
    j = sdc.judge_run({0: canon(y), 1: canon(near)}, {0: "m", 1: "m"})
    assert j[0].status == j[1].status == "ok" and j[0].reference == "peer"
    j = sdc.judge_run({0: canon(y), 1: canon(y * 3)}, {0: "m", 1: "m"})
    assert j[0].status == j[1].status == "disputed"
    outs = {0: canon(y), 1: canon(near), 2: canon(near + 1), 3: canon(np.ones(5, np.float32))}
    j = sdc.judge_run(outs, GROUP4)
    assert j[3].status == "mismatch" and j[3].diff.structural


# -- verdicts -----------------------------------------------------------------------------------


def case(kernel="gemm", dtype="float32", **kw):
    return sdc.CaseResult(kernel, dtype, exact=kernel == "igemm", **kw)


@pytest.mark.parametrize(
    ("cases", "verdict"),
    [
        ([case(runs=3, ok_runs=3)], "healthy"),
        ([case(runs=3, ok_runs=2, unjudged_runs=1)], "healthy"),
        ([case(runs=3, ok_runs=2, mismatched_runs=1)], "suspect"),  # once, not reproduced
        ([case(runs=3, ok_runs=1, mismatched_runs=2)], "faulty"),  # reproduced
        ([case(runs=1, mismatched_runs=1), case("reduce", runs=1, mismatched_runs=1)], "faulty"),
        ([case("igemm", "int8", runs=3, ok_runs=2, mismatched_runs=1)], "faulty"),  # exact
        ([case(runs=2, ok_runs=1, error_runs=1)], "suspect"),
        ([case(runs=2, ok_runs=1, disputed_runs=1)], "suspect"),
        ([case(runs=2, ok_runs=1, invalid_runs=1)], "faulty"),
    ],
)
def test_verdict_thresholds(cases, verdict):
    got, reasons = sdc.classify(cases)
    assert got == verdict
    assert bool(reasons) == (verdict != "healthy")


def test_threshold_constants_are_the_documented_ones():
    assert sdc.FAULTY_MIN_MISMATCH_RUNS == 2
    assert sdc.SPREAD_FACTOR == 4.0 and sdc.MIN_TOLERANCE_ULPS == 2.0
    assert "FAULTY_MIN_MISMATCH_RUNS" in sdc.__doc__ or "(2)" in sdc.__doc__


def test_case_result_accumulates_runs():
    y = np.linspace(1, 2, 10, dtype=np.float32)
    outs = {i: canon(y) for i in range(3)}
    r = sdc.CaseResult("gemm", "float32")
    r.add(sdc.judge_run(outs, GROUP4)[0], 0)
    clean_digest = r.expected_digest
    outs[0] = canon(flip(y, 3, 29))
    r.add(sdc.judge_run(outs, GROUP4)[0], 1)
    outs[0] = canon(flip(flip(y, 1, 29), 2, 4))
    r.add(sdc.judge_run(outs, GROUP4)[0], 2)
    r.add_failure("error", "kernel raised RuntimeError: CUDA error", 3)
    assert (r.runs, r.ok_runs, r.mismatched_runs, r.error_runs) == (4, 1, 2, 1)
    assert r.reproduced == "2/3" and r.mismatch_repeats == [1, 2] and r.status == "mismatch"
    assert r.mismatching_elements == 3 and r.max_mismatching_elements == 2
    assert r.bit_histogram[29] == 2 and r.bit_histogram[4] == 1
    assert r.expected_digest == clean_digest and r.actual_digest != clean_digest  # first bad run
    assert any("CUDA error" in n for n in r.notes)


# -- report -------------------------------------------------------------------------------------


def make_report() -> sdc.SdcReport:
    devices = []
    for i in range(3):
        bad = i == 2
        cases = [
            sdc.CaseResult(
                "gemm",
                "float16",
                runs=2,
                ok_runs=0 if bad else 2,
                mismatched_runs=2 if bad else 0,
                elements=4096,
                mismatching_elements=2 if bad else 0,
                max_dev_ulps=math.inf if bad else 0.0,
                bit_histogram=[0] * 14 + [2, 0] if bad else [],
                references=["majority"],
                expected_digest="ab" * 32,
                actual_digest=("cd" if bad else "ab") * 32,
            ),
            sdc.CaseResult("igemm", "int8", exact=True, runs=2, ok_runs=2, references=["known"]),
        ]
        dev = sdc.DeviceReport(
            i,
            f"slot{i}",
            node_ip="10.0.0.1",
            device="cuda",
            name="NVIDIA H200",
            uuid=f"GPU-000{i}",
            pci_bus_id=f"00000000:1{i}:00.0",
            cases=cases,
        )
        dev.judge()
        devices.append(dev)
    suite = [c.to_dict() for c in sdc.suite("quick") if c.id in ("gemm/float16", "igemm/int8")]
    return sdc.SdcReport("quick", 2, suite, devices, started="2026-01-01T00:00:00+00:00")


def test_report_verdicts_and_quarantine_suggestion():
    r = make_report()
    assert r.verdicts() == {"slot0": "healthy", "slot1": "healthy", "slot2": "faulty"}
    assert not r.healthy
    bad = r.device(2)
    assert "quarantine slot2 on 10.0.0.1 (GPU-0002)" in bad.quarantine
    assert r.device(0).quarantine == "none"


def test_json_round_trip_is_strict_json():
    r = make_report()
    text = r.to_json()
    data = json.loads(text)  # no Infinity literals
    assert data["devices"][2]["cases"][0]["max_dev_ulps"] == "inf"
    assert data["summary"] == {"healthy": 2, "suspect": 0, "faulty": 1}
    assert data["devices"][2]["cases"][0]["reproduced"] == "2/2"
    back = sdc.SdcReport.from_json(text)
    assert back == r
    assert back.device(2).cases[0].max_dev_ulps == math.inf


def test_tables_name_the_faulty_slot():
    console = Console(width=200, record=True)
    make_report().print(console)
    text = console.export_text()
    assert "1 faulty" in text and "GPU-0002" in text and "00000000:12:00.0" in text
    row = next(line for line in text.splitlines() if "slot2" in line and "b14x2" in line)
    assert "float16" in row and "b14x2" in row and "2/2" in row and "inf" in row
    assert not any("slot0" in line and "float16" in line for line in text.splitlines())


def test_heatmap_and_save_write_files(tmp_path):
    pytest.importorskip("matplotlib")
    r = make_report()
    _rows, cols, values, labels = r.heatmap_matrix()
    assert cols == ["igemm/int8", "gemm/float16"] and values[2, 1] == 1.0 and labels[2][1] == "2/2"
    paths = r.save(tmp_path / "out")
    png = (tmp_path / "out" / sdc.PNG_NAME).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert paths["json"].endswith(sdc.JSON_NAME)
    assert (
        sdc.SdcReport.from_json((tmp_path / "out" / sdc.JSON_NAME).read_text()).artifacts == paths
    )


# -- fault injection helpers --------------------------------------------------------------------


def test_parse_inject():
    i, b = sdc.parse_inject("2:bitflip")
    assert i == 2 and isinstance(b, faults.BitFlip) and b.bit is None
    i, b = sdc.parse_inject("0:intermittent=0.25@gemm/float16,igemm")
    assert i == 0 and isinstance(b, sdc.KernelFault) and b.inner.p == 0.25
    assert b.kernels == ("gemm/float16", "igemm")
    assert sdc.parse_inject("3:bitflip=5")[1].bit == 5
    for bad in ("bitflip", "x:bitflip", "2:lies", "2:bitflip=x", "2:"):
        with pytest.raises(ValueError):
            sdc.parse_inject(bad)


def test_kernel_fault_only_touches_its_kernels():
    f = sdc.KernelFault(faults.bitflip(), ["gemm/float16"])
    out = {"c": np.zeros(4, dtype=np.float16)}
    hit = f.corrupt(out, faults.FaultContext(1, "sdc:gemm:float16:r0:slot1", 0))
    miss = f.corrupt(out, faults.FaultContext(1, "sdc:gemm:float32:r0:slot1", 0))
    other = f.corrupt(out, faults.FaultContext(1, "task-7", 0))
    assert hit["c"].any() and not miss["c"].any() and not other["c"].any()
    assert faults.resolve(f) is f


def test_cli_command_is_registered_with_its_options():
    from bft_ray.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["sdc-check", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--address", "--level", "--repeat", "--executors", "--out", "--json"):
        assert option in result.output
    bad = runner.invoke(sdc.sdc_check_command, ["--inject", "2:lies"])
    assert bad.exit_code == 2 and "unknown fault" in bad.output
    assert runner.invoke(sdc.sdc_check_command, ["--level", "huge"]).exit_code == 2
