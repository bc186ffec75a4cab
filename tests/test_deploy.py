"""The container image recipe and the Kubernetes manifests: linted and validated
offline, no Docker engine and no cluster. Core kinds are validated against the
Kubernetes OpenAPI schemas bundled by kubernetes-validate (strict: unknown fields fail);
the Prometheus Operator CRDs (PodMonitor, ServiceMonitor, PrometheusRule) are not in
those schemas and get a hand-written structural check instead."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from alerts import rules
from linnix_exporter import __version__
from linnix_exporter.config import DEFAULT_PORT, RUN_OPTIONS

yaml = pytest.importorskip("yaml")  # comes with kubernetes-validate (dev dependency)

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
SETUP_SH = REPO / "scripts" / "setup.sh"
K8S = REPO / "deploy" / "kubernetes"
NAMESPACE = "linnix-system"
# Packages the image installs beyond scripts/setup.sh's RUNTIME_PKGS: build tooling, and
# the CA bundle a host has already (its own trust store stays the host's business).
IMAGE_ONLY_PKGS = {"python3-venv", "ca-certificates"}
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "podMetricsEndpoints",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "endpoints",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "groups",
}
# Oldest Kubernetes still commonly run, and the newest the schemas know.
K8S_VERSIONS = ("1.28", "latest")


# ---------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text: str = "") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = text or DOCKERFILE.read_text()
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    return out


def runtime_pkgs() -> list[str]:
    m = re.search(r"^RUNTIME_PKGS=\(([^)]*)\)", SETUP_SH.read_text(), re.M)
    assert m, "RUNTIME_PKGS=(...) not found in scripts/setup.sh"
    return m.group(1).split()


def apt_installed(instructions: list[tuple[str, str]]) -> set[str]:
    pkgs: set[str] = set()
    for instr, args in instructions:
        if instr != "RUN":
            continue
        lex = shlex.shlex(args, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        cmd: list[str] = []
        for tok in [*lex, ";"]:
            if tok in ("&&", "||", ";", "|"):
                words = [w for w in cmd if not re.fullmatch(r"[A-Z_]+=\S*", w)]  # env
                if words[:2] in (["apt-get", "install"], ["apt", "install"]):
                    pkgs |= {w for w in words[2:] if not w.startswith("-")}
                cmd = []
            else:
                cmd.append(tok)
    return pkgs


def test_dockerfile_base_image_is_pinned() -> None:
    # Multi-stage: Debian's packages are installed in the build stage, and the image
    # is FROM scratch plus the files the exporter runs with (deploy/image/rootfs.sh).
    froms = [a for i, a in dockerfile_instructions() if i == "FROM"]
    assert froms == ["debian:bookworm-slim AS build", "scratch"], froms
    for image in froms[:-1]:
        _name, _, tag = image.split()[0].partition(":")
        assert tag and tag != "latest", f"FROM {image}: pin a tag"
    assert not re.search(r":latest\b", DOCKERFILE.read_text())


def test_dockerfile_apt_hygiene() -> None:
    runs = [a for i, a in dockerfile_instructions() if i == "RUN"]
    apt_runs = [r for r in runs if re.search(r"\bapt(-get)? ", r)]
    assert apt_runs, "no apt-get RUN"
    for r in apt_runs:
        assert " apt " not in f" {r} ", "use apt-get, not apt, in scripts"
        if "apt-get install" in r:
            assert "--no-install-recommends" in r, r
            assert re.search(r"\s-y\b|--yes|--assume-yes", r), r
            assert "apt-get update" in r, "update and install in the same RUN"
            assert "rm -rf /var/lib/apt/lists/*" in r, "clean the lists in the same RUN"


def test_dockerfile_installs_exactly_the_runtime_packages_of_setup_sh() -> None:
    installed = apt_installed(dockerfile_instructions())
    wanted = set(runtime_pkgs())
    assert wanted == {"python3-bpfcc", "bpftool", "linux-headers-amd64"}  # parser sanity
    assert wanted - installed == set(), "in RUNTIME_PKGS but not in the image"
    assert installed - wanted - IMAGE_ONLY_PKGS == set(), "in the image but not RUNTIME_PKGS"


def test_dockerfile_exec_forms_healthcheck_and_no_remote_add() -> None:
    ins = dockerfile_instructions()
    kinds = [i for i, _ in ins]
    assert "ADD" not in kinds or all(
        not re.search(r"https?://", a) for i, a in ins if i == "ADD"
    ), "no ADD of URLs"
    entry = [a for i, a in ins if i == "ENTRYPOINT"]
    assert len(entry) == 1
    assert json.loads(entry[0]) == ["/opt/linnix-exporter/bin/linnix-exporter", "run"]
    for i, a in ins:
        if i == "CMD":
            assert isinstance(json.loads(a), list), "CMD in exec form"
    hc = [a for i, a in ins if i == "HEALTHCHECK"]
    assert len(hc) == 1
    cmd = json.loads(hc[0][hc[0].index("CMD") + 3 :].strip())
    assert cmd[0] == "/opt/linnix-exporter/bin/python" and "urllib" in cmd[-1]
    assert f"127.0.0.1:{DEFAULT_PORT}/healthz" in cmd[-1]
    assert [a for i, a in ins if i == "EXPOSE"] == [str(DEFAULT_PORT)]
    users = [a for i, a in ins if i == "USER"]
    assert users in ([], ["root"]), "BPF needs root"


def test_dockerfile_copy_sources_exist_and_are_not_dockerignored() -> None:
    ignore = (REPO / ".dockerignore").read_text().split()
    allowed = {p.lstrip("!").rstrip("/") for p in ignore if p.startswith("!")}
    assert "*" in ignore, ".dockerignore should be an allow-list"
    ins = dockerfile_instructions()
    stages = {a.split()[-1] for i, a in ins if i == "FROM" and " AS " in a}
    copies = [a for i, a in ins if i == "COPY" and not a.startswith("--from=")]
    assert copies
    for args in (a for i, a in ins if i == "COPY" and a.startswith("--from=")):
        assert args.split()[0].removeprefix("--from=") in stages, f"COPY {args}: no such stage"
    for args in copies:
        *srcs, _dest = args.split()
        for src in srcs:
            assert (REPO / src).exists(), f"COPY {src}: no such path in the repository"
            assert src.rstrip("/") in allowed, f"COPY {src}: excluded by .dockerignore"
    copied = {s.rstrip("/") for a in copies for s in a.split()[:-1]}
    # What the wheel build needs: metadata, readme, package, and bpf/ (force-included);
    # and the recipe of the image's root filesystem.
    assert {"pyproject.toml", "README.md", "linnix_exporter", "bpf", "deploy/image"} <= copied


def test_dockerfile_venv_sees_debian_bcc_like_setup_sh() -> None:
    text = DOCKERFILE.read_text()
    setup = SETUP_SH.read_text()
    target = "/usr/lib/python3/dist-packages/bcc"
    assert f"ln -sfn {target} .venv/debian-bcc/bcc" in setup  # what we mirror
    assert f"ln -sfn {target} /opt/linnix-exporter/debian-bcc/bcc" in text
    assert 'sysconfig.get_paths()["purelib"]' in text and "debian-bcc.pth" in text
    assert "python3 -m venv /opt/linnix-exporter" in text


def test_dockerfile_oci_labels() -> None:
    labels = " ".join(a for i, a in dockerfile_instructions() if i == "LABEL")
    found = dict(re.findall(r'(org\.opencontainers\.image\.\w+)="([^"]*)"', labels))
    keys = {"title", "description", "source", "licenses", "version"}
    assert {f"org.opencontainers.image.{k}" for k in keys} <= set(found)
    assert found["org.opencontainers.image.licenses"] == "Apache-2.0"
    args = [a for i, a in dockerfile_instructions() if i == "ARG"]
    assert f"VERSION={__version__}" in args, "ARG VERSION must match linnix_exporter"


# ---------------------------------------------------------------- manifests


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in manifest_files() for d in docs(p)]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for _, d in all_docs()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def kubernetes_validate() -> Any:
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.fail(
            "kubernetes-validate is not installed: it is a dev dependency "
            "(pip install -e '.[dev]', or `make setup`)",
            pytrace=False,
        )
    import kubernetes_validate as kv

    return kv


def check_crd(d: dict[str, Any]) -> None:
    """The CRDs' schemas are not bundled: check the structure by hand."""
    key = CRD_KINDS[(d["apiVersion"], d["kind"])]
    assert set(d) == {"apiVersion", "kind", "metadata", "spec"}, set(d)
    meta = d["metadata"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]), meta["name"]
    assert set(meta) <= {"name", "namespace", "labels", "annotations"}
    assert all(isinstance(v, str) for v in meta.get("labels", {}).values())
    spec = d["spec"]
    assert isinstance(spec.get(key), list) and spec[key], f"spec.{key} must be a list"
    if d["kind"] in ("PodMonitor", "ServiceMonitor"):
        assert set(spec) <= {"jobLabel", "selector", "namespaceSelector", key}, set(spec)
        assert set(spec["selector"]) == {"matchLabels"}
        for ep in spec[key]:
            assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "relabelings"}
            assert isinstance(ep["port"], str), "use the named port"
            for r in ep.get("relabelings", []):
                assert set(r) <= {"sourceLabels", "targetLabel", "replacement", "action"}
    else:
        for g in spec["groups"]:
            assert set(g) <= {"name", "interval", "rules"} and g["rules"]
            for r in g["rules"]:
                assert ("alert" in r) != ("record" in r) and isinstance(r["expr"], str)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates(version: str) -> None:
    kv = kubernetes_validate()
    desired = kv.latest_version() if version == "latest" else version
    seen = 0
    for path, d in all_docs():
        if (d.get("apiVersion"), d.get("kind")) in CRD_KINDS:
            check_crd(d)
        else:
            try:
                kv.validate(d, desired, strict=True)
            except kv.ValidationError as e:
                pytest.fail(f"{path.name}: {d['kind']}: {e.message}", pytrace=False)
        seen += 1
    assert seen >= 8


def test_kustomization_lists_the_manifests() -> None:
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert k["namespace"] == NAMESPACE
    listed = set(k["resources"])
    optional = {"servicemonitor.yaml", "sidecar-example.yaml"}
    assert listed == {p.name for p in manifest_files()} - optional
    assert "prometheusrule.yaml" in listed


def test_namespaced_objects_live_in_linnix_system() -> None:
    for path, d in all_docs():
        if d["kind"] == "Namespace" or path.name in ("sidecar-example.yaml",):
            continue
        # prometheusrule.yaml is generated without a namespace: kustomize sets it.
        assert d["metadata"].get("namespace", NAMESPACE) == NAMESPACE, path.name


def test_daemonset_runs_the_exporter_as_documented() -> None:
    ds = one("DaemonSet", "linnix-exporter")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert not pod.get("hostNetwork")
    assert {"operator": "Exists"} in pod["tolerations"]
    (c,) = pod["containers"]
    assert "command" not in c, "keep the image's ENTRYPOINT"
    assert "--web.listen-address=:10924" in c["args"]
    assert "--node.name=$(NODE_NAME)" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["OTEL_RESOURCE_ATTRIBUTES"]["value"] == "k8s.node.name=$(NODE_NAME)"
    assert c["ports"] == [{"name": "metrics", "containerPort": DEFAULT_PORT, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["readOnlyRootFilesystem"] is True
    # The systemd unit's five (tests/test_deploy_extra.py); tests/test_image.py shows
    # owners need the last two.
    assert sc["capabilities"] == {
        "drop": ["ALL"],
        "add": ["BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"],
    }
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/sys/kernel/btf", "/sys/kernel/tracing"):
        assert mounts[path]["readOnly"] is True
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    # Written at start-up (headers symlink, temp files): writable and container-local;
    # the host's /lib/modules must never be rewritten.
    for path in ("/lib/modules", "/tmp"):
        assert "emptyDir" in volumes[mounts[path]["name"]], path
    # The sysctl markers outlive the pod and are shared with tools on the host.
    run = volumes[mounts["/run/linnix-exporter"]["name"]]["hostPath"]
    assert run == {"path": "/run/linnix-exporter", "type": "DirectoryOrCreate"}
    assert not mounts["/run/linnix-exporter"].get("readOnly")


def parse_quantity(q: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3, "": 1}
    m = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|m|)", q)
    assert m, q
    return float(m.group(1)) * units[m.group(2)]


def test_daemonset_resources_fit_the_measured_figures() -> None:
    (c,) = one("DaemonSet", "linnix-exporter")["spec"]["template"]["spec"]["containers"]
    req, lim = c["resources"]["requests"], c["resources"]["limits"]
    mib = 2**20
    # Steady RSS: 29 MiB (/metrics), 34 MiB (OTLP HTTP), 49 MiB (OTLP gRPC).
    assert parse_quantity(req["memory"]) >= 49 * mib
    # The probe compile child adds ~130-150 MB for ~1 s at start-up, in the same cgroup.
    assert parse_quantity(lim["memory"]) >= 49 * mib + 150e6
    assert parse_quantity(req["cpu"]) >= 0.0004  # 0.04% of a core at idle
    assert parse_quantity(lim["cpu"]) >= 0.1  # the ~1 s compile must not crawl


def test_container_args_are_real_options() -> None:
    flags = {o.flag for o in RUN_OPTIONS}
    flags |= {"--no-" + o.flag[2:] for o in RUN_OPTIONS if o.boolean}
    for path, d in all_docs():
        if d["kind"] not in ("DaemonSet", "Deployment"):
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            if "linnix-exporter" not in c["image"]:
                continue
            for arg in c.get("args", []):
                assert arg.split("=", 1)[0] in flags, f"{path.name}: unknown option {arg}"


def test_podmonitor_scrapes_the_job_the_rules_select() -> None:
    pm = one("PodMonitor")
    pod_labels = one("DaemonSet", "linnix-exporter")["spec"]["template"]["metadata"]["labels"]
    sel = pm["spec"]["selector"]["matchLabels"]
    assert sel.items() <= pod_labels.items(), "PodMonitor selects no DaemonSet pod"
    job = pod_labels[pm["spec"]["jobLabel"]]
    assert rules.Params().job_matcher == f'job="{job}"'
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics"
    # The ServiceMonitor alternative: same job, and not-ready pods kept in the Endpoints.
    sm, svc = one("ServiceMonitor"), one("Service", "linnix-exporter")
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == job
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["clusterIP"] == "None"


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "generate_configmap", REPO / "deploy" / "generate_configmap.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dashboards_configmap_is_not_stale() -> None:
    gen = load_generator()
    current = (K8S / "dashboards-configmap.yaml").read_text()
    assert current == gen.render(), (
        "deploy/kubernetes/dashboards-configmap.yaml is stale: "
        "run .venv/bin/python deploy/generate_configmap.py"
    )
    cm = one("ConfigMap", "linnix-exporter-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = sorted((REPO / "dashboards").glob("*.json"))
    assert len(files) == 3
    assert sorted(cm["data"]) == [f.name for f in files]
    for f in files:
        assert cm["data"][f.name] == f.read_text(), f"{f.name} differs after the round trip"
