"""cluster.yaml passes Ray's own config validation and keeps bft-ray's trust boundary.

``check_cluster_config`` runs the cluster launcher's ``prepare_config`` (defaults merged, setup
commands merged per node type, as ``ray up`` does) and ``validate_config`` (Ray's JSON schema),
then checks what bft-ray relies on: the trusted head offers nothing an executor or an ordinary
task could be placed on, every GPU worker type carries one ``bft_executor`` per GPU, the
dashboard and job API are unreachable from workers, no virtual environment is synced, and
every node installs the Ray the client runs plus this package. The mutation test proves each
check can fail.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"
EXECUTOR_RESOURCE = "bft_executor"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
RAY_PIN = re.compile(r"""\bray(?:\[[^\]]*\])?==([0-9][^\s"',;]*)""")


def _flag(command: str, name: str) -> str | None:
    """Value of ``--name=value`` or ``--name value`` in a shell command, else ``None``."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    for i, word in enumerate(words):
        if word.startswith(f"--{name}="):
            return word.split("=", 1)[1]
        if word == f"--{name}" and i + 1 < len(words):
            return words[i + 1]
    return None


def _drops_non_local(commands: list[str], port: int) -> bool:
    """Some command installs a firewall rule dropping TCP ``port`` unless it comes from lo."""
    rule = re.compile(rf"iptables\s+-[AI]\s+INPUT\b.*--dport\s+{port}\b.*!\s+-i\s+lo\b.*-j\s+DROP")
    return any(rule.search(c) for c in commands)


def check_cluster_config(raw: dict[str, Any]) -> list[str]:
    """Problems of a cluster launcher config (``[]`` when it is fine).

    Raises:
        jsonschema.ValidationError, ValueError: when Ray's own validation refuses the config.
    """
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    problems: list[str] = []
    types = config["available_node_types"]
    head_name = config["head_node_type"]
    head = types[head_name]

    # The trusted head: no executor bundle (CPU and/or GPU) and no ordinary task fits on it.
    head_res = head.get("resources", {})
    for res in ("CPU", "GPU", EXECUTOR_RESOURCE):
        if head_res.get(res, 0) != 0:
            problems.append(f"head offers {res}={head_res[res]}: executors could land on it")
    missing = [res for res in ("CPU", "GPU") if res not in head_res]
    if missing:
        problems.append(f"head does not declare {missing}: Ray would detect the instance's own")

    # Untrusted GPU workers: one executor resource per GPU, nothing for executors elsewhere.
    gpu_types = {n: t for n, t in types.items() if n != head_name and t["resources"].get("GPU")}
    if not gpu_types:
        problems.append("no GPU worker type: there is nowhere to place executors")
    for name, t in types.items():
        gpus, slots = t["resources"].get("GPU", 0), t["resources"].get(EXECUTOR_RESOURCE, 0)
        if name != head_name and gpus != slots:
            problems.append(f"{name}: {EXECUTOR_RESOURCE}={slots} but GPU={gpus} (one per GPU)")
    if not any(t.get("min_workers", 0) >= 1 for t in gpu_types.values()):
        problems.append("no GPU worker type starts with the cluster (min_workers >= 1)")
    worker_max = sum(t["max_workers"] for n, t in types.items() if n != head_name)
    if config["max_workers"] < worker_max:
        problems.append(f"max_workers={config['max_workers']} caps the types' sum {worker_max}")

    # Dashboard and job API: bound to the head's loopback, agent and Ray Client firewalled.
    head_starts = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    if not head_starts or any("--head" not in c for c in head_starts):
        problems.append("head_start_ray_commands do not start a Ray head")
    for c in head_starts:
        host = _flag(c, "dashboard-host")
        if host not in LOCAL_HOSTS:
            problems.append(f"dashboard bound to {host!r}, reachable from workers: {c}")
        if _flag(c, "num-gpus") not in (None, "0") or _flag(c, "num-cpus") not in (None, "0"):
            problems.append(f"head start command offers CPUs or GPUs: {c}")
        for flag, default in (
            ("dashboard-agent-listen-port", 52365),
            ("ray-client-server-port", 10001),
        ):
            port = int(_flag(c, flag) or default)
            if not _drops_non_local(config["head_setup_commands"], port):
                problems.append(f"head port {port} (--{flag}) is reachable from workers")

    # Nothing of the local virtual environment travels to the nodes.
    excludes = set(config.get("rsync_exclude") or [])
    if not excludes & {".venv", ".venv/", "**/.venv", ".venv/**"}:
        problems.append("rsync_exclude does not exclude .venv")
    for remote, local in (config.get("file_mounts") or {}).items():
        if ".venv" in str(local) or ".venv" in str(remote):
            problems.append(f"file_mounts syncs a virtual environment: {remote}: {local}")

    # Every node: the client's Ray, pinned, and this package from the synced checkout.
    mounts = [str(m).rstrip("/") for m in (config.get("file_mounts") or {})]
    for which in ("head_setup_commands", "worker_setup_commands"):
        commands = config[which]
        pins = [v for c in commands for v in RAY_PIN.findall(c)]
        if not pins:
            problems.append(f"{which}: Ray is not installed at a pinned version")
        elif set(pins) != {ray.__version__}:
            problems.append(
                f"{which}: Ray pinned to {sorted(set(pins))}, client has {ray.__version__}"
            )
        installs = [c for c in commands if "pip install" in c and any(m in c for m in mounts)]
        if not installs:
            problems.append(f"{which}: nothing pip-installs the synced checkout {mounts}")
    return problems


def load() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_ray_validation_and_bft_checks():
    assert check_cluster_config(load()) == []


def _set_head_resource(cfg, res="bft_executor", value=1):
    cfg["available_node_types"][cfg["head_node_type"]]["resources"][res] = value


def _drop_worker_slots(cfg):
    cfg["available_node_types"]["gpu_worker"]["resources"].pop("bft_executor")


def _replace_in(key, old, new):
    def mutate(cfg):
        cfg[key] = [c.replace(old, new) for c in cfg[key]]

    return mutate


def _drop_firewall(cfg):
    cfg["head_setup_commands"] = [c for c in cfg["head_setup_commands"] if "52365" not in c]


def _sync_venv(cfg):
    cfg["rsync_exclude"] = [p for p in cfg["rsync_exclude"] if ".venv" not in p]


def _typo(cfg):
    cfg["available_node_types"]["gpu_worker"]["min_worker"] = 1  # Ray's schema refuses it


MUTATIONS = {
    "executor resource on the head": (_set_head_resource, "head offers bft_executor"),
    "GPU on the head": (lambda c: _set_head_resource(c, "GPU", 1), "head offers GPU"),
    "CPU on the head": (lambda c: _set_head_resource(c, "CPU", 8), "head offers CPU"),
    "GPU worker without executor resource": (_drop_worker_slots, "gpu_worker: bft_executor=0"),
    "dashboard on all interfaces": (
        _replace_in("head_start_ray_commands", "127.0.0.1", "0.0.0.0"),
        "dashboard bound to '0.0.0.0'",
    ),
    "agent port open": (_drop_firewall, "head port 52365"),
    ".venv synced": (_sync_venv, "does not exclude .venv"),
    "other Ray version": (
        _replace_in("setup_commands", f"=={ray.__version__}", "==2.40.0"),
        "client has",
    ),
    "package not installed": (
        _replace_in("worker_setup_commands", "-e ~/bft-ray", "numpy"),
        "worker_setup_commands: nothing pip-installs",
    ),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_each_check_catches_its_mutation(name):
    mutate, expected = MUTATIONS[name]
    cfg = load()
    mutate(cfg)
    problems = check_cluster_config(cfg)
    assert any(expected in p for p in problems), problems


def test_ray_schema_validation_runs():
    cfg = load()
    _typo(cfg)
    with pytest.raises(Exception, match="min_worker"):
        check_cluster_config(cfg)
