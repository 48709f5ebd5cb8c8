"""The ``bft-ray`` command line (also ``python -m bft_ray``).

Commands (``--help`` on each; exit status 0 on success, 1 on a failed check, 2 on a usage
error):

* ``demo [ARGS]``: the demo job (:mod:`bft_ray.demo`) on a local Ray.
* ``status [--address A] [--name N] [--json]``: attach to a running bft-ray cluster and show
  its executors (trust, flags, quarantine), counters and, in BFT mode, each verifier.
* ``keys [--address A] [--name N]``: the running cluster's verifier public keys as JSON (the
  ``--keys`` file of ``verify`` and ``audit``).
* ``verify CERT.json --keys KEYS.json [--task-id T] [--value-digest HEX]``: check a
  certificate offline (no Ray needed).
* ``audit PATH [--keys FILE]``: audit a verifier ledger file, or every ``*.sqlite`` ledger in
  a directory (:mod:`bft_ray.verifier.audit`). ``FILE`` is a JSON list of the verifiers'
  public keys in hex; with it the ledgers must name exactly those keys. Prints one line per
  ledger; exits 0 if every ledger passes, 1 if one fails (or there is none).
* ``bench [NAME ...] [--quick]``: run the benchmarks of a source checkout.
* ``sdc-check``: the fleet silent-data-corruption check (:mod:`bft_ray.sdc`).

Example:
    >>> from click.testing import CliRunner
    >>> result = CliRunner().invoke(main, ["audit", "/no/such/ledger.sqlite"])
    >>> result.exit_code
    2
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _read_keys(path: Path) -> list[bytes]:
    """The public keys of a ``--keys`` file (a JSON list of hex strings)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise click.BadParameter(f"{path}: not a JSON file: {e}", param_hint="--keys") from e
    if type(data) is not list or not data or not all(type(k) is str for k in data):
        raise click.BadParameter(
            f"{path}: expected a non-empty JSON list of hex public keys", param_hint="--keys"
        )
    try:
        keys = [bytes.fromhex(k) for k in data]
    except ValueError as e:
        raise click.BadParameter(f"{path}: a key is not hex: {e}", param_hint="--keys") from e
    if any(len(k) != 32 for k in keys):
        raise click.BadParameter(
            f"{path}: every key must be a raw 32-byte Ed25519 public key (64 hex digits)",
            param_hint="--keys",
        )
    return keys


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages to stderr.")
def main(verbose: bool) -> None:
    """bft-ray: Byzantine-fault-tolerant verified computation on Ray."""
    if verbose:
        logging.basicConfig(level=logging.DEBUG)


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=True, dir_okay=True, path_type=Path))
@click.option(
    "--keys",
    "keys_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON list of the verifiers' public keys (hex); the ledgers must name exactly these.",
)
def audit(path: Path, keys_file: Path | None) -> None:
    """Audit a verifier ledger file, or every *.sqlite ledger in a directory."""
    from bft_ray.verifier.audit import audit as audit_one
    from bft_ray.verifier.audit import audit_dir

    keys = _read_keys(keys_file) if keys_file is not None else None
    reports = (
        audit_dir(path, verifier_keys=keys)
        if path.is_dir()
        else [audit_one(path, verifier_keys=keys)]
    )
    if not reports:
        click.echo(f"FAILED  {path}: no *.sqlite ledger files in this directory")
        click.get_current_context().exit(1)
    for r in reports:
        click.echo(r.line())
    failed = sum(not r.ok for r in reports)
    if len(reports) > 1:
        click.echo(f"{len(reports) - failed} of {len(reports)} ledgers pass")
    click.get_current_context().exit(1 if failed else 0)


# -- demo, status, keys, verify, bench ----------------------------------------------------------


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Run the demo (verified calls with lying executors and a Byzantine verifier).

    Extra arguments go to the demo, e.g. ``bft-ray demo --tasks 20 --verifiers 1``
    (``bft-ray demo --help`` lists them).
    """
    from bft_ray.demo import main as demo_main

    ctx.exit(demo_main(list(ctx.args)))


def _attach(address: str | None, name: str) -> Any:
    """Connect to Ray and attach to the bft-ray cluster ``name`` (never create one)."""
    import ray

    from bft_ray.api import _attach as attach

    target = address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        ray.init(address=target, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as exc:  # no Ray there: say so plainly
        raise click.ClickException(
            f"cannot connect to Ray at {target!r}: {exc}. Pass --address (or set RAY_ADDRESS) "
            "to the cluster that runs bft-ray."
        ) from None
    cluster = attach(name)
    if cluster is None:
        raise click.ClickException(
            f"no bft-ray cluster named {name!r} runs in the Ray cluster at {target!r} "
            "(start one with bft_ray.init(), or pass --name)."
        )
    return cluster


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


_ADDRESS = click.option(
    "--address", default=None, help="Ray address (default: RAY_ADDRESS or auto)."
)
_NAME = click.option("--name", default="default", show_default=True, help="bft-ray cluster name.")


@main.command()
@_ADDRESS
@_NAME
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def status(address: str | None, name: str, as_json: bool) -> None:
    """Show a running cluster: executors, trust, flags, quarantine, verifiers."""
    cluster = _attach(address, name)
    report = cluster.report()
    verifiers = cluster.verifier_status() if cluster.spec.verifiers > 1 else []
    if as_json:
        click.echo(
            json.dumps(
                _jsonable(
                    {
                        "name": name,
                        "executors": report.executors,
                        "counters": report.counters,
                        "recent": report.recent,
                        "verifiers": verifiers,
                        "verifier_keys": cluster.verifier_keys(),
                    }
                ),
                indent=2,
                sort_keys=True,
            )
        )
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(report.table())
    if report.recent:
        recent = Table(title="recent verdicts (newest last)", title_justify="left")
        for col in ("task", "function", "verdict", "agreed", "flagged", "replicas", "seconds"):
            recent.add_column(col)
        for v in report.recent[-10:]:
            style = "red" if v["verdict"] == "failed" or v["dissent"] else None
            recent.add_row(
                v["task_id"],
                v["function"],
                v["verdict"],
                " ".join(v["agreed"]),
                " ".join(v["dissent"]),
                str(v["replicas"]),
                f"{v['seconds']:.3f}",
                style=style,
            )
        console.print(recent)
    if verifiers:
        table = Table(title=f"verifier group (n={len(verifiers)})", title_justify="left")
        for col in ("verifier", "behaviour", "round", "committed round", "pending", "ledger rows"):
            table.add_column(col)
        for v in verifiers:
            if "error" in v:
                table.add_row(str(v["index"]), f"[red]{v['error']}[/]", "", "", "", "")
            else:
                table.add_row(
                    str(v["index"]),
                    v["fault"],
                    str(v["round"]),
                    str(v["committed_round"]),
                    str(v["pending"]),
                    str(v["ledger_height"]),
                )
        console.print(table)


@main.command()
@_ADDRESS
@_NAME
def keys(address: str | None, name: str) -> None:
    """Print the running cluster's verifier public keys as a JSON list of hex strings."""
    cluster = _attach(address, name)
    click.echo(json.dumps([k.hex() for k in cluster.verifier_keys()]))


@main.command()
@click.argument("cert_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--keys",
    "keys_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON list of the verifiers' public keys (hex), e.g. from `bft-ray keys`.",
)
@click.option("--task-id", default=None, help="The certificate must be for this task.")
@click.option("--value-digest", default=None, help="The certified digest must be this (hex).")
@click.option(
    "--require-commit-proof",
    is_flag=True,
    help="A BFT certificate must carry the QCs proving its block committed (checked if present).",
)
def verify(
    cert_file: Path,
    keys_file: Path,
    task_id: str | None,
    value_digest: str | None,
    require_commit_proof: bool,
) -> None:
    """Check a certificate (JSON) offline against the verifiers' keys."""
    from bft_ray.errors import CertificateError
    from bft_ray.verifier.certificate import Certificate, verify_certificate

    keys_ = _read_keys(keys_file)
    digest = None
    if value_digest is not None:
        try:
            digest = bytes.fromhex(value_digest)
        except ValueError:
            raise click.BadParameter("not hex", param_hint="--value-digest") from None
    try:
        cert = Certificate.from_json(cert_file.read_text())
        verify_certificate(
            cert,
            keys_,
            task_id=task_id,
            value_digest=digest,
            raise_on_failure=True,
            require_commit_proof=require_commit_proof,
        )
    except (CertificateError, UnicodeDecodeError) as exc:
        click.echo(f"INVALID  {cert_file}: {exc}")
        click.get_current_context().exit(1)
    click.echo(
        f"VALID    {cert_file}: task {cert.task_id} ({cert.mode}), digest {cert.digest.hex()[:16]}, "
        f"{len(cert.agreeing)} agreeing executors, {len(cert.signatures)} verifier signatures"
        + (", commit proven by QCs" if cert.commit_proof else "")
    )


_BENCHES = ("overhead", "compare", "consensus", "throughput", "bft", "robust")


@main.command()
@click.argument("names", nargs=-1, type=click.Choice(_BENCHES))
@click.option("--quick", is_flag=True, help="Smoke-sized runs.")
def bench(names: tuple[str, ...], quick: bool) -> None:
    """Run benchmarks of a source checkout (default: all but robust); results in benchmarks/results/."""
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    if not root.is_dir():
        raise click.ClickException(
            "benchmarks/ is not next to this installation: run from a source checkout "
            "(git clone, then `make bench`)."
        )
    failed = []
    for name in names or [b for b in _BENCHES if b != "robust"]:
        script = root / f"bench_{name}.py"
        if not script.exists():
            raise click.ClickException(f"{script} is missing")
        click.echo(f"== bench {name}")
        cmd = [sys.executable, str(script)] + (["--quick"] if quick else [])
        if subprocess.run(cmd, check=False).returncode != 0:
            failed.append(name)
    if failed:
        click.echo(f"failed: {', '.join(failed)}")
        click.get_current_context().exit(1)


def _register_optional() -> None:
    # The SDC check pulls in torch; register it only where its module exists.
    try:
        from bft_ray.sdc import sdc_check_command
    except ImportError as exc:  # pragma: no cover - only without the sdc module
        logger.debug("sdc-check unavailable: %s", exc)
        return
    main.add_command(sdc_check_command, "sdc-check")


_register_optional()
