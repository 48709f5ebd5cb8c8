"""Fleet silent-data-corruption check: deterministic kernels on every executor, judged per device.

Runs on a local embedded Ray (one executor per GPU, or four CPU executors on a machine without
GPUs) or on a cluster with ``ray job submit`` (the job joins it through ``RAY_ADDRESS``)::

    .venv/bin/python jobs/sdc_check.py --level quick
    .venv/bin/ray job submit --address http://127.0.0.1:8265 \\
        --runtime-env-json '{"working_dir": ".", "excludes": [".venv", ".git"]}' \\
        -- "$PWD/.venv/bin/python" jobs/sdc_check.py --level standard

Every device runs integer, fp32, fp16 and bf16 GEMMs, reductions and a transformer block
(forward and backward) with fixed seeds, ``--repeat`` times; each answer is judged against the
exact known answer or the majority of the devices of the same model (:mod:`bft_ray.sdc`). The
job prints one line per device (node, slot, GPU UUID and PCI bus id, verdict, suggestion) and the
kernel runs that did not match, and writes ``sdc_report.json`` and ``sdc_heatmap.png`` to
``--out``. Exit status: 0 if every device is healthy, 1 if any is suspect or faulty, 2 on a
configuration error. ``--inject 2:bitflip`` injects a fault into slot 2 (demos and tests).

Example:
    .. code-block:: console

        $ .venv/bin/python jobs/sdc_check.py --level quick --inject 2:intermittent=0.5
"""

from __future__ import annotations

import argparse
import logging
import sys

from bft_ray import sdc


def _inject(text: str) -> tuple:
    try:
        return sdc.parse_inject(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The job's command line (the same options as ``bft-ray sdc-check``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--address", default=None, help="Ray address to join (default: RAY_ADDRESS, else local)"
    )
    p.add_argument("--level", choices=sdc.LEVELS, default="quick", help="suite sizes")
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs of every kernel per device (default: quick 2, standard 3, long 10)",
    )
    p.add_argument(
        "--executors",
        type=int,
        default=None,
        help="devices to check (default: one per GPU, or 4 CPU executors without GPUs)",
    )
    p.add_argument(
        "--out", default=sdc.DEFAULT_OUT, help="directory of the JSON report and PNG heatmap"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON, not tables")
    p.add_argument(
        "--inject",
        action="append",
        default=[],
        type=_inject,
        metavar="INDEX:FAULT[=ARG][@KERNELS]",
        help="demo/test only: inject a fault, e.g. 2:bitflip or 1:intermittent=0.5@gemm",
    )
    p.add_argument(
        "--timeout", type=float, default=600.0, help="seconds before an executor counts as stalled"
    )
    p.add_argument("--verbose", "-v", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns the exit status (0 healthy, 1 suspect or faulty, 2 bad config)."""
    args = build_parser().parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        build_parser().error("--repeat must be at least 1")
    if args.executors is not None and args.executors < 1:
        build_parser().error("--executors must be at least 1")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return sdc.check_main(
        address=args.address,
        level=args.level,
        repeat=args.repeat,
        executors=args.executors,
        out=args.out,
        as_json=args.json,
        inject=args.inject,
        timeout_s=args.timeout,
    )


if __name__ == "__main__":
    sys.exit(main())
