"""`bft_ray.consensus` and `bft_ray.sim` never import Ray, and the core stays deterministic.

Two independent checks: a static one over every source file (imports parsed with `ast`), and a
dynamic one that loads both packages in a fresh interpreter under a stub `bft_ray` package (so
the real `bft_ray/__init__.py`, which does import Ray, is not run) and inspects `sys.modules`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "bft_ray"
ALLOWED_BFT = ("consensus", "sim")
# Sources of non-determinism (clocks, threads, randomness, I/O) banned from the core.
CORE_BANNED = {
    "random",
    "time",
    "threading",
    "asyncio",
    "os",
    "datetime",
    "secrets",
    "socket",
    "subprocess",
    "multiprocessing",
    "concurrent",
    "uuid",
    "ray",
}


def imported_modules(path: Path, root: Path = ROOT) -> list[str]:
    """Absolute names of every module a file imports (relative imports resolved)."""
    rel = path.relative_to(root).with_suffix("")
    package = list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:
                    out += [f"{mod}.{a.name}" for a in node.names]
                else:
                    out.append(mod)
            else:
                out.append(node.module or "")
    return out


def violations(path: Path, core: bool, root: Path = ROOT) -> list[str]:
    bad = []
    for mod in imported_modules(path, root):
        top = mod.split(".")[0]
        if top == "ray":
            bad.append(f"{path.name}: imports {mod}")
        if top == "bft_ray":
            parts = mod.split(".")
            if len(parts) < 2 or parts[1] not in ALLOWED_BFT:
                bad.append(f"{path.name}: imports {mod}")
            if core and len(parts) >= 2 and parts[1] != "consensus":
                bad.append(f"{path.name}: core imports {mod}")
        if core and top in CORE_BANNED:
            bad.append(f"{path.name}: core imports {mod}")
    return bad


def test_static_import_check_can_fail(tmp_path):
    fake = tmp_path / "bft_ray" / "consensus" / "probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..errors import BftRayError\nimport ray.util\nimport time\n")
    found = violations(fake, core=True, root=tmp_path)
    assert any("bft_ray.errors" in v for v in found)
    assert any("ray.util" in v for v in found)
    assert any("time" in v for v in found)


def test_sources_never_import_ray_or_other_bft_ray_modules():
    files = sorted((PKG / "consensus").rglob("*.py")) + sorted((PKG / "sim").rglob("*.py"))
    assert len(files) >= 10
    bad = []
    for f in files:
        bad += violations(f, core=f.is_relative_to(PKG / "consensus"))
    assert not bad, bad


def test_packages_load_without_ray_in_a_fresh_interpreter():
    code = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys, types
        stub = types.ModuleType("bft_ray")
        stub.__path__ = [{str(PKG)!r}]
        sys.modules["bft_ray"] = stub
        for name in ("bft_ray.consensus", "bft_ray.sim"):
            pkg = importlib.import_module(name)
            for info in pkgutil.walk_packages(pkg.__path__, name + "."):
                importlib.import_module(info.name)
        from bft_ray.sim import SimConfig, Simulation
        assert Simulation(SimConfig(seed=1, max_ticks=60)).run().ok
        loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
        other = sorted(m for m in sys.modules if m.startswith("bft_ray.")
                       and m.split(".")[1] not in ("consensus", "sim"))
        print("RAY", loaded, "OTHER", other)
        assert not loaded and not other
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "RAY [] OTHER []" in out.stdout


# The pure verdict path: what every verifier backend (and the BFT verifiers' payload validation)
# runs. It may use bft_ray's pure modules, and the error hierarchy (whose base class is Ray's
# RayError), but never Ray itself nor the actor, pool, guard or API layers.
VERDICT_PATH = [
    "bft_ray/verifier/admission.py",
    "bft_ray/verifier/decision.py",
    "bft_ray/verifier/records.py",
    "bft_ray/verifier/certificate.py",
    "bft_ray/verifier/commit_proof.py",
    "bft_ray/verifier/claims.py",
    "bft_ray/executor/envelope.py",
    "bft_ray/executor/attestation.py",
    "bft_ray/merkle.py",
    "bft_ray/compare/wire.py",
    "bft_ray/compare/canonical.py",
    "bft_ray/compare/digest.py",
    "bft_ray/compare/tolerance.py",
]
VERDICT_ALLOWED = {
    "bft_ray.compare",
    "bft_ray.config",
    "bft_ray.consensus",  # the pure core (its own test above keeps it free of Ray)
    "bft_ray.crypto",
    "bft_ray.errors",
    "bft_ray.executor.attestation",
    "bft_ray.executor.envelope",
    "bft_ray.merkle",
    "bft_ray.verifier.admission",
    "bft_ray.verifier.certificate",
    "bft_ray.verifier.claims",
    "bft_ray.verifier.commit_proof",
    "bft_ray.verifier.decision",
}


def verdict_violations(path: Path, root: Path = ROOT) -> list[str]:
    bad = []
    for mod in imported_modules(path, root):
        top = mod.split(".")[0]
        if top == "ray":
            bad.append(f"{path.name}: imports {mod}")
        if top == "bft_ray" and not any(
            mod == a or mod.startswith(a + ".") for a in VERDICT_ALLOWED
        ):
            bad.append(f"{path.name}: imports {mod}")
    return bad


def test_verdict_path_check_can_fail(tmp_path):
    fake = tmp_path / "bft_ray" / "verifier" / "probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("import ray\nfrom bft_ray.executor import guard\nfrom ..api import init\n")
    found = verdict_violations(fake, root=tmp_path)
    assert len(found) == 3, found


def test_verdict_path_never_imports_ray_or_the_actor_layers():
    bad = []
    for rel in VERDICT_PATH:
        bad += verdict_violations(ROOT / rel)
    assert not bad, bad
