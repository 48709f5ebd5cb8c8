"""``python -m bft_ray``: the :mod:`bft_ray.cli` command line.

Example:
    .. code-block:: console

        $ python -m bft_ray audit ledgers/ --keys verifier-keys.json
"""

from bft_ray.cli import main

if __name__ == "__main__":
    main(prog_name="bft-ray")
