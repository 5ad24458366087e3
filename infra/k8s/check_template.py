"""Offline checks of the Kubernetes work-pool example: no cluster and no server needed.

    .venv/bin/python infra/k8s/check_template.py     # prints what it checked; exit 1 naming each problem

1. Prefect's own base-job-template validation (what the server runs on `prefect work-pool create
   --base-job-template`): every ``{{ placeholder }}`` is a declared variable.
2. The variables' defaults, and the job variables of the two example runs below, conform to the
   variables' JSON schema (the server checks deployment job variables the same way).
3. Rendering through Prefect's own ``BaseJobConfiguration.from_template_and_values`` (defaults
   merged with job variables, ``env`` deep-merged, placeholders replaced), for a GPU training run
   (the defaults) and a CPU-only data run (``gpu_count: 0``, no GPU node selector or toleration).
4. The rendered Job passes the manifest checks the prefect-kubernetes worker applies before it
   creates a Job (restated here from its ``KubernetesWorkerJobConfiguration`` validators; the
   package itself is not installed): required paths present, ``restartPolicy: Never``,
   ``parallelism``/``completions`` 1 in the pod template.
5. GPU request == limit == ``gpu_count``; every volume mount has a volume; /dev/shm is mounted.
6. worker.yaml parses, its worker polls ``rlhf-gpu`` as a kubernetes worker with the API URL and
   a cluster uid set, and its Role can create Jobs and read pods and their logs in the namespace
   the template uses.

What this cannot check: that a cluster accepts the Job (no API server here), the image, the
GPU node labels and taints of your cluster.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "gpu-base-job-template.json"
WORKER = HERE / "worker.yaml"
POOL = "rlhf-gpu"
IMAGE = "registry.example.com/rlhf-pipeline:0.1.0-cu128"

# The example runs: job variables a deployment (or a flow run) passes to the pool.
EXAMPLES: dict[str, dict[str, Any]] = {
    "gpu training run (template defaults)": {"image": IMAGE},
    "cpu-only data run": {"image": IMAGE, "gpu_count": 0, "node_selector": {}, "tolerations": [], "cpu": "8",
                          "memory": "16Gi", "env": {"RLHF_EXAMPLE": "1"}},
}

# prefect-kubernetes' `_get_base_job_manifest()`: what its validators diff a job manifest against.
WORKER_BASE_MANIFEST = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"labels": {}},
    "spec": {"template": {"spec": {"parallelism": 1, "completions": 1, "restartPolicy": "Never",
                                   "containers": [{"name": "prefect-job"}]}}},
}


class _NoClient:
    """from_template_and_values only needs an API client to resolve block and variable references; the template has none."""


def _job_configuration_class():
    from prefect.workers.base import BaseJobConfiguration

    class KubernetesLikeJobConfiguration(BaseJobConfiguration):
        # the fields of prefect-kubernetes' KubernetesWorkerJobConfiguration, so that nothing is dropped
        namespace: str = "default"
        job_manifest: dict[str, Any]
        cluster_config: dict[str, Any] | None = None
        job_watch_timeout_seconds: int | None = None
        pod_watch_timeout_seconds: int = 60
        stream_output: bool = True

    KubernetesLikeJobConfiguration.model_rebuild(_types_namespace={"Any": Any})  # defined in a function
    return KubernetesLikeJobConfiguration


def worker_manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """The two job-manifest validators of prefect-kubernetes' worker, restated."""
    manifest = copy.deepcopy(manifest)
    manifest.setdefault("metadata", {}).setdefault("labels", {})  # the worker adds these before checking
    patch = jsonpatch.JsonPatch.from_diff(manifest, WORKER_BASE_MANIFEST)
    missing = sorted(op["path"] for op in patch if op["op"] == "add")
    wrong = sorted(f"{op['path']} must be {op['value']!r}" for op in patch if op["op"] == "replace")
    return ([f"job manifest is missing {', '.join(missing)}"] if missing else []) + (
        [f"job manifest has {', '.join(wrong)}"] if wrong else [])


def render(template: dict[str, Any], job_variables: dict[str, Any]) -> dict[str, Any]:
    cls = _job_configuration_class()
    config = asyncio.run(cls.from_template_and_values(template, job_variables, client=_NoClient()))
    return config.model_dump()


def check_rendered(label: str, config: dict[str, Any], job_variables: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    problems = [f"{label}: {p}" for p in worker_manifest_problems(config["job_manifest"])]
    pod = config["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    gpus = job_variables.get("gpu_count", defaults.get("gpu_count"))
    resources = container.get("resources", {})
    for side in ("requests", "limits"):
        got = resources.get(side, {}).get("nvidia.com/gpu")
        if got != gpus:
            problems.append(f"{label}: resources.{side}['nvidia.com/gpu'] is {got!r}, expected {gpus}")
    if container.get("image") != job_variables["image"]:
        problems.append(f"{label}: image is {container.get('image')!r}")
    for key, variable in (("nodeSelector", "node_selector"), ("tolerations", "tolerations")):
        want = job_variables.get(variable, defaults.get(variable))
        if pod.get(key) != want:
            problems.append(f"{label}: {key} is {pod.get(key)!r}, expected the {variable} variable {want!r}")
    volumes = {v["name"] for v in pod.get("volumes", [])}
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    if set(mounts) - volumes:
        problems.append(f"{label}: volume mounts without a volume: {sorted(set(mounts) - volumes)}")
    if "/dev/shm" not in mounts.values():
        problems.append(f"{label}: /dev/shm is not mounted")
    want_env = {**defaults.get("env", {}), **job_variables.get("env", {})}
    if config["env"] != want_env:
        problems.append(f"{label}: env is {config['env']!r}, expected the pool's defaults merged with the run's")
    unrendered = [s for s in _strings(config) if "{{" in s]
    if unrendered:
        problems.append(f"{label}: placeholders left unrendered: {unrendered}")
    return problems


def _strings(tree: Any) -> list[str]:
    if isinstance(tree, str):
        return [tree]
    if isinstance(tree, dict):
        return [s for v in tree.values() for s in _strings(v)]
    if isinstance(tree, list):
        return [s for v in tree for s in _strings(v)]
    return []


def check_worker(namespace: str) -> list[str]:
    docs = [d for d in yaml.safe_load_all(WORKER.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    problems = []
    for kind in ("Namespace", "PersistentVolumeClaim", "ServiceAccount", "Role", "RoleBinding", "Deployment"):
        if kind not in by_kind:
            problems.append(f"worker.yaml: no {kind}")
    if problems:
        return problems
    for d in docs:
        ns = d["metadata"].get("namespace", d["metadata"]["name"] if d["kind"] == "Namespace" else None)
        if ns != namespace:
            problems.append(f"worker.yaml: {d['kind']} {d['metadata']['name']} is in namespace {ns!r}, the jobs in {namespace!r}")
    command = " ".join(str(c) for c in by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]["command"])
    if f"--pool {POOL}" not in command or "--type kubernetes" not in command:
        problems.append(f"worker.yaml: the worker does not start with --pool {POOL} --type kubernetes: {command}")
    env = {e["name"] for e in by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    for name in ("PREFECT_API_URL", "PREFECT_KUBERNETES_CLUSTER_UID"):  # the uid: the Role cannot read kube-system
        if name not in env:
            problems.append(f"worker.yaml: the worker's environment lacks {name}")
    rules = {(g, r): set(rule["verbs"]) for rule in by_kind["Role"]["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    for (group, resource), verbs in {("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
                                     ("", "pods"): {"get", "list", "watch"}, ("", "pods/log"): {"get"}}.items():
        if not verbs <= rules.get((group, resource), set()):
            problems.append(f"worker.yaml: the Role lacks {sorted(verbs - rules.get((group, resource), set()))} on {resource}")
    binding = by_kind["RoleBinding"]
    if binding["roleRef"]["name"] != by_kind["Role"]["metadata"]["name"] or binding["subjects"][0]["name"] != (
            by_kind["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"]):
        problems.append("worker.yaml: the RoleBinding does not bind the Role to the worker's service account")
    return problems


def main() -> int:
    from prefect._internal.schemas.validators import validate_values_conform_to_schema
    from prefect.server.schemas.actions import validate_base_job_template

    template = json.loads(TEMPLATE.read_text())
    problems: list[str] = []
    try:
        validate_base_job_template(template)
    except ValueError as exc:
        problems.append(f"{TEMPLATE.name}: {exc}")
    schema = template["variables"]
    defaults = {k: v["default"] for k, v in schema["properties"].items() if "default" in v}
    for label, values in {"defaults": defaults, **EXAMPLES}.items():
        try:
            validate_values_conform_to_schema(values, schema, ignore_required=True)
        except ValueError as exc:
            problems.append(f"{TEMPLATE.name}: {label}: {exc}")
    for label, job_variables in EXAMPLES.items():
        config = render(template, job_variables)
        problems += check_rendered(label, config, job_variables, defaults)
        print(f"rendered {label}: namespace {config['namespace']}, "
              f"gpu {config['job_manifest']['spec']['template']['spec']['containers'][0]['resources']}")
    problems += check_worker(defaults.get("namespace", "default"))
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    print(f"{'FAILED' if problems else 'ok'}: {TEMPLATE.name} and {WORKER.name} "
          f"({len(problems)} problem(s); checks 1-6 in {Path(__file__).name}'s docstring)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
