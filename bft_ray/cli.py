"""The ``bft-ray`` command line (also ``python -m bft_ray``).

Commands:

* ``audit PATH [--keys FILE]``: audit a verifier ledger file, or every ``*.sqlite`` ledger in
  a directory (:mod:`bft_ray.verifier.audit`). ``FILE`` is a JSON list of the verifiers'
  public keys in hex; with it the ledgers must name exactly those keys. Prints one line per
  ledger; exits 0 if every ledger passes, 1 if one fails (or there is none), 2 on a usage
  error.

Example:
    >>> from click.testing import CliRunner
    >>> result = CliRunner().invoke(main, ["audit", "/no/such/ledger.sqlite"])
    >>> result.exit_code
    2
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

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
