"""The Helm chart in helm/thorax, rendered with Helm's own engine (helm-python-sdk bundles Helm's Go SDK):
no cluster and no `helm` binary needed.

Every case renders, lints clean and validates against the Kubernetes schemas of a pinned version; the
`THORAX_` variables the chart sets are settings the gateway knows, and the rendered settings load into
the gateway's own `Settings`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from service.settings import Settings  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "thorax"
README = REPO / "helm" / "README.md"
KUBE_VERSION = "1.31"
RELEASE, NAMESPACE = "thorax", "thorax"
# Kinds that come from CRDs, which kubernetes-validate has no schemas for.
CRD_KINDS = {"ServiceMonitor"}
# THORAX_ variables the chart sets that are not gateway settings: the model store is read by
# `thorax.store` (test_model_store_variable_is_read_by_the_store checks it).
STORE_VARIABLE = "THORAX_MODEL_STORE"
# TorchServe's container sets only what the .mar's handler reads.
HANDLER = REPO / "training" / "serve_handler.py"
# Settings that come from the Secret rather than `config`.
SECRET_SETTINGS = {"THORAX_S3_ACCESS_KEY": "s3-access-key", "THORAX_S3_SECRET_KEY": "s3-secret-key",
                   "THORAX_API_KEYS": "api-keys"}  # fmt: skip

# Every feature on, the chart creating the Secret and copying the models from S3.
ALL_ON_CREATED_SECRET = {
    "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3},
    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
    "podDisruptionBudget": {"enabled": True, "minAvailable": 1},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "hosts": [{"host": "thorax.example.org", "paths": [{"path": "/", "pathType": "Prefix"}]}],
        "tls": [{"secretName": "thorax-tls", "hosts": ["thorax.example.org"]}],
    },
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "secret": {
        "s3AccessKey": "trial-access",
        "s3SecretKey": "trial-secret-123",
        "apiKeys": "key-one, key-two",
        "metricsApiKey": "prometheus-key",
    },
    "models": {"source": "s3", "s3": {"bucket": "thorax-models", "prefix": "store/"}},
    "torchserve": {"enabled": True, "model": "cxr64/1", "resources": {"requests": {"cpu": "2"}}},
    "s3": {"inCluster": {"enabled": True, "persistence": {"enabled": True, "size": "5Gi"}}},
    "config": {"defaultModel": "cxr64/1", "storagePrefix": "jobs", "s3Region": "us-east-1"},
    "dask": {"enabled": True},  # gateway autoscaling needs the Dask executor
}
# Every feature on, the other way round: an existing Secret, the model store on a PVC.
ALL_ON_EXISTING_SECRET = {
    "autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80},
    "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
    "ingress": {"enabled": True},
    "metrics": {"serviceMonitor": {"enabled": True}},
    "existingSecret": "thorax-credentials",
    "models": {"source": "pvc", "persistence": {"existingClaim": "thorax-models", "subPath": "store"}},
    "torchserve": {"enabled": True, "resources": {"requests": {"cpu": "4"}}},
    "s3": {"inCluster": {"enabled": True, "persistence": {"enabled": True, "existingClaim": "s3-data"}}},
    "dask": {"scheduler": "tcp://dask-scheduler.hpc.example.org:8786"},  # an existing cluster
}
# Local storage (no S3 endpoint): a single gateway writing to an emptyDir.
LOCAL_STORAGE = {
    "config": {"s3Endpoint": ""},
    "models": {"source": "pvc", "persistence": {"existingClaim": "m"}},
}


def readme_values() -> dict:
    """The example values file of helm/README.md's deployment section (the yaml block)."""
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the deployment section has one values file"
    return yaml.safe_load(blocks[0])


# `--set torchserve.enabled=true` alone: TorchServe's default CPU request lets its autoscaler render.
TORCHSERVE_ONLY = {"torchserve": {"enabled": True}}

# Dask in the cluster alone (`--set dask.enabled=true`), and an existing Dask cluster's scheduler.
DASK_ONLY = {"dask": {"enabled": True}}
DASK_EXISTING = {"dask": {"scheduler": "tcp://10.0.0.5:8786"}, "replicaCount": 3}

CASES = {
    "defaults": {},
    "torchserve-only": TORCHSERVE_ONLY,
    "dask-only": DASK_ONLY,
    "dask-existing-cluster": DASK_EXISTING,
    "all-on-created-secret": ALL_ON_CREATED_SECRET,
    "all-on-existing-secret": ALL_ON_EXISTING_SECRET,
    "local-storage": LOCAL_STORAGE,
    "readme-s3-bucket": readme_values(),
}


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart, values: dict) -> list[dict]:
    chart.validate_schema(values)  # what `helm install` does first
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def notes(chart, values: dict) -> str:
    return chart.render(values, name=RELEASE, namespace=NAMESPACE)[f"{CHART.name}/templates/NOTES.txt"]


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[dict]) -> dict[str, dict]:
    specs = {f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]["spec"] for d in docs
             if d["kind"] == "Deployment"}  # fmt: skip
    specs.update({f"Pod/{d['metadata']['name']}": d["spec"] for d in docs if d["kind"] == "Pod"})
    return specs


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def environment(docs: list[dict], container: dict) -> dict[str, object]:
    """A container's variables: values from its ConfigMaps, `valueFrom` entries as the source."""
    env: dict[str, object] = {}
    for source in container.get("envFrom", []):
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        env[item["name"]] = item["value"] if "value" in item else item["valueFrom"]
    return env


def gateway(docs: list[dict]) -> dict:
    spec = find(docs, "Deployment", RELEASE)["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == "gateway")


def setting_variables() -> set[str]:
    return {f"THORAX_{name.upper()}" for name in Settings.model_fields}


def handler_variables() -> set[str]:
    return set(re.findall(r"\"(THORAX_[A-Z0-9_]+)\"", HANDLER.read_text()))


# ---- the chart renders, lints and validates -----------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_lint_reports_no_errors(case: str) -> None:
    report = helm.lint(CHART, CASES[case], namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0")
    errors = [m for m in report["messages"] if m["severity"] >= 3]
    assert report["errors"] == [] and errors == []


@pytest.mark.parametrize("case", CASES)
def test_every_manifest_validates_against_kubernetes(chart, case: str) -> None:
    docs = render(chart, CASES[case])
    expected = {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"}
    if not CASES[case].get("existingSecret"):
        expected.add("Secret")
    assert expected <= {d["kind"] for d in docs}
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_defaults_deploy_only_the_gateway(chart) -> None:
    docs = render(chart, {})
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == [
        ("ConfigMap", "thorax"),
        ("ConfigMap", "thorax-fetch-models"),
        ("Deployment", "thorax"),
        ("Pod", "thorax-test-connection"),
        ("PodDisruptionBudget", "thorax"),
        ("Secret", "thorax"),
        ("Service", "thorax"),
        ("ServiceAccount", "thorax"),
    ]
    env = environment(docs, gateway(docs))
    assert env["THORAX_S3_ENDPOINT"] == "s3.amazonaws.com" and env["THORAX_S3_SECURE"] == "true"
    assert env["THORAX_BACKEND"] == "auto"  # the gateway picks its fastest backend at start


def test_every_feature_renders_its_objects(chart) -> None:
    docs = render(chart, ALL_ON_CREATED_SECRET)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert names >= {
        ("Deployment", "thorax"), ("Service", "thorax"), ("Ingress", "thorax"),
        ("HorizontalPodAutoscaler", "thorax"), ("PodDisruptionBudget", "thorax"),
        ("ServiceMonitor", "thorax"), ("Secret", "thorax"), ("ConfigMap", "thorax-fetch-models"),
        ("Deployment", "thorax-torchserve"), ("Service", "thorax-torchserve"),
        ("HorizontalPodAutoscaler", "thorax-torchserve"), ("ConfigMap", "thorax-torchserve"),
        ("Deployment", "thorax-s3"), ("Service", "thorax-s3"), ("PersistentVolumeClaim", "thorax-s3"),
    }  # fmt: skip
    ingress = find(docs, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "thorax", "port": {"number": 80}}
    assert find(docs, "PodDisruptionBudget", "thorax")["spec"] == {
        "minAvailable": 1,
        "selector": find(docs, "Deployment", "thorax")["spec"]["selector"],
    }
    assert "replicas" not in find(docs, "Deployment", "thorax")["spec"]  # the autoscaler owns it


# ---- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_every_thorax_variable_is_a_gateway_setting(chart, case: str) -> None:
    docs = render(chart, CASES[case])
    for where, spec in pod_specs(docs).items():
        for container in containers(spec):
            is_torchserve = container["name"] == "torchserve"
            known = handler_variables() if is_torchserve else setting_variables() | {STORE_VARIABLE}
            unknown = {k for k in environment(docs, container) if k.startswith("THORAX_")} - known
            assert not unknown, f"{where} {container['name']} sets {unknown}, which the gateway does not know"


def test_model_store_variable_is_read_by_the_store(monkeypatch, tmp_path) -> None:
    from thorax.store import store_root

    monkeypatch.setenv(STORE_VARIABLE, str(tmp_path))
    assert store_root() == tmp_path


def test_config_maps_one_to_one_onto_settings(chart) -> None:
    """Every gateway setting is reachable: a `config` key (camelCase) or a Secret key, never both."""
    config_keys = set(chart.schema["properties"]["config"]["properties"])
    assert config_keys == set(chart.values["config"]), "values.yaml and the schema list the same settings"
    from_config = {"THORAX_" + re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).upper() for key in config_keys}
    assert from_config | set(SECRET_SETTINGS) == setting_variables()
    assert not from_config & set(SECRET_SETTINGS)


@pytest.mark.parametrize("case", CASES)
def test_rendered_settings_load_into_the_gateway_settings(chart, case: str, monkeypatch) -> None:
    docs = render(chart, CASES[case])
    env = environment(docs, gateway(docs))
    secret = None if CASES[case].get("existingSecret") else find(docs, "Secret", RELEASE)
    for name in [k for k in os.environ if k.startswith("THORAX_")]:  # only what the chart sets
        monkeypatch.delenv(name)
    for name, value in env.items():
        if isinstance(value, dict):  # from the Secret; an absent optional key leaves it unset
            ref = value["secretKeyRef"]
            assert ref["key"] == SECRET_SETTINGS[name] and ref["name"] == (
                CASES[case].get("existingSecret") or RELEASE
            )
            if secret is None or ref["key"] not in (secret.get("stringData") or {}):
                continue
            value = secret["stringData"][ref["key"]]
        monkeypatch.setenv(name, value)
    settings = Settings()  # raises if a value does not parse or is out of range
    assert env[STORE_VARIABLE] == "/models"
    storage_ok = settings.s3_endpoint and settings.s3_bucket
    local_ok = any(m["mountPath"] == str(settings.storage_dir) for m in gateway(docs)["volumeMounts"])
    assert storage_ok or local_ok, "the gateway needs an S3 endpoint or a writable storage folder"
    if settings.backend == "torchserve":
        assert settings.torchserve_url


def test_every_feature_sets_what_it_needs(chart) -> None:
    docs = render(chart, ALL_ON_CREATED_SECRET)
    env = environment(docs, gateway(docs))
    ts_port = find(docs, "Service", "thorax-torchserve")["spec"]["ports"][0]["port"]
    assert env["THORAX_BACKEND"] == "torchserve"
    assert env["THORAX_TORCHSERVE_URL"] == f"http://thorax-torchserve:{ts_port}"
    s3_port = find(docs, "Service", "thorax-s3")["spec"]["ports"][0]["port"]
    assert env["THORAX_S3_ENDPOINT"] == f"thorax-s3:{s3_port}" and env["THORAX_S3_SECURE"] == "false"
    secret = find(docs, "Secret", RELEASE)["stringData"]
    assert secret["s3-access-key"] == "trial-access" and secret["s3-secret-key"] == "trial-secret-123"
    assert secret["api-keys"] == "key-one,key-two,prometheus-key"
    (seaweedfs,) = find(docs, "Deployment", "thorax-s3")["spec"]["template"]["spec"]["containers"]
    s3_env = environment(docs, seaweedfs)
    assert s3_env["AWS_ACCESS_KEY_ID"]["secretKeyRef"] == {"name": RELEASE, "key": "s3-access-key"}


# ---- security, probes, models ---------------------------------------------------------------------


@pytest.mark.parametrize("case", ["defaults", "all-on-created-secret", "all-on-existing-secret"])
def test_every_container_is_non_root_read_only_and_drops_capabilities(chart, case: str) -> None:
    for where, spec in pod_specs(render(chart, CASES[case])).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["automountServiceAccountToken"] is False, where
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v} if "volumes" in spec else set()
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"] is True, where
            if where.startswith("Deployment/"):
                tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
                assert tmp and tmp[0]["name"] in tmp_volumes, f"{where} {c['name']} needs a writable /tmp"


def test_gateway_probes_and_command(chart) -> None:
    docs = render(chart, {})
    c = gateway(docs)
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["command"] == ["thorax", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    service = find(docs, "Service", RELEASE)["spec"]
    assert service["ports"][0]["targetPort"] == "http"
    # The Service and PDB select the gateway pods only, never TorchServe's or the S3 server's.
    assert service["selector"]["app.kubernetes.io/component"] == "gateway"


def test_models_copied_from_s3_are_verified_before_start(chart) -> None:
    docs = render(chart, ALL_ON_CREATED_SECRET)
    for name in ("thorax", "thorax-torchserve"):
        spec = find(docs, "Deployment", name)["spec"]["template"]["spec"]
        fetch, verify = spec["initContainers"]
        assert fetch["name"] == "fetch-models"
        assert fetch["command"] == ["python", "/etc/thorax/fetch_models.py"]
        env = environment(docs, fetch)
        assert env["MODELS_S3_BUCKET"] == "thorax-models" and env["MODELS_S3_PREFIX"] == "store/"
        assert env["MODELS_S3_ENDPOINT"] == "thorax-s3:8333" and env["MODELS_S3_SECURE"] == "false"
        assert verify["name"] == "verify-models" and verify["command"] == ["thorax", "models", "verify"]
        assert environment(docs, verify)[STORE_VARIABLE] == "/models"
        models = next(v for v in spec["volumes"] if v["name"] == "models")
        assert "emptyDir" in models
    script = find(docs, "ConfigMap", "thorax-fetch-models")["data"]["fetch_models.py"]
    compile(script, "fetch_models.py", "exec")


def test_models_from_a_pvc_are_mounted_read_only_and_verified(chart) -> None:
    docs = render(chart, ALL_ON_EXISTING_SECRET)
    for name in ("thorax", "thorax-torchserve"):
        spec = find(docs, "Deployment", name)["spec"]["template"]["spec"]
        assert [c["name"] for c in spec["initContainers"]] == ["verify-models"]
        models = next(v for v in spec["volumes"] if v["name"] == "models")
        assert models["persistentVolumeClaim"] == {"claimName": "thorax-models", "readOnly": True}
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "models")
        assert mount == {"name": "models", "mountPath": "/models", "readOnly": True, "subPath": "store"}
    assert not [d for d in render(chart, ALL_ON_EXISTING_SECRET) if d["kind"] == "Secret"]


def test_torchserve_loads_the_mar_and_scales(chart) -> None:
    docs = render(chart, ALL_ON_CREATED_SECRET)
    spec = find(docs, "Deployment", "thorax-torchserve")["spec"]["template"]["spec"]
    env = environment(docs, spec["containers"][0])
    assert env["MODEL_REF"] == "cxr64/1" and env["MODELS_DIR"] == "/models"
    assert env["THORAX_TORCH_THREADS"] == "1" and handler_variables() == {"THORAX_TORCH_THREADS"}
    start = find(docs, "ConfigMap", "thorax-torchserve")["data"]["start.sh"]
    assert '--model-store "$MODELS_DIR/$ref" --models "$name=$name.mar"' in start
    assert "--disable-token-auth" in start and "--foreground" in start
    hpa = find(docs, "HorizontalPodAutoscaler", "thorax-torchserve")["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "thorax-torchserve")
    assert spec["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/ping"


def test_enabling_torchserve_alone_renders_with_default_requests(chart) -> None:
    docs = render(chart, TORCHSERVE_ONLY)
    spec = find(docs, "Deployment", "thorax-torchserve")["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}
    hpa = find(docs, "HorizontalPodAutoscaler", "thorax-torchserve")["spec"]
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    assert environment(docs, gateway(docs))["THORAX_BACKEND"] == "torchserve"
    # an operator's own CPU request replaces the default and keeps the default memory request
    tuned = render(chart, {"torchserve": {"enabled": True, "resources": {"requests": {"cpu": "4"}}}})
    spec = find(tuned, "Deployment", "thorax-torchserve")["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["requests"] == {"cpu": "4", "memory": "1Gi"}


def test_metrics_scraping(chart) -> None:
    pod = find(render(chart, {}), "Deployment", RELEASE)["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    docs = render(chart, ALL_ON_CREATED_SECRET)
    monitor = find(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"] == find(docs, "Service", RELEASE)["spec"]["selector"]
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    # /metrics needs a key when THORAX_API_KEYS is set: the monitor sends one of them.
    credentials = endpoint["authorization"]["credentials"]
    secret = find(docs, "Secret", RELEASE)["stringData"]
    assert secret[credentials["key"]] in secret["api-keys"].split(",")


# ---- wrong values fail at install -------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, where",
    [
        ({"config": {"backend": "tensorflow"}}, "/config/backend"),
        ({"config": {"batchSize": 0}}, "/config/batchSize"),
        ({"config": {"s3PartSize": 1024}}, "/config/s3PartSize"),
        ({"config": {"unknownSetting": 1}}, "unknownSetting"),
        ({"config": {"s3Endpoint": "https://s3.example.org"}}, "/config/s3Endpoint"),  # host:port, not a URL
        ({"models": {"source": "nfs"}}, "/models/source"),
        ({"models": {"source": "pvc"}}, "/models/persistence/existingClaim"),
        ({"torchserve": {"model": "cxr64"}}, "/torchserve/model"),  # NAME/VERSION
        ({"extraEnv": [{"name": "THORAX_BACKEND", "value": "x"}]}, "/extraEnv/0/name"),  # use config
        ({"replicaCount": -1}, "/replicaCount"),
    ],
    ids=repr,
)
def test_schema_rejects_wrong_values(chart, values: dict, where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        chart.validate_schema(values)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"config": {"backend": "torchserve"}}, "torchserveUrl"),
        ({"secret": {"s3AccessKey": "only-one"}}, "go together"),
        ({"s3": {"inCluster": {"enabled": True}}}, "needs credentials"),
        # a utilization target without a request never scales
        (
            {"torchserve": {"enabled": True, "resources": {"requests": {"cpu": None}}}},
            "set torchserve.resources.requests.cpu",
        ),
        ({"autoscaling": {"enabled": True}}, "set resources.requests.cpu"),
        # a job's progress lives in one gateway's memory with the local executor
        ({"replicaCount": 2}, "2 gateway replicas need the Dask executor"),
        (
            {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": "1"}}},
            "4 gateway replicas need the Dask executor",
        ),
        ({"config": {"executor": "dask"}}, "needs dask.enabled=true or dask.scheduler"),
        ({"dask": {"enabled": True, "scheduler": "tcp://x:8786"}}, "set one of them"),
        ({"dask": {"enabled": True}, **LOCAL_STORAGE}, "needs S3 storage"),
        (
            {"dask": {"enabled": True, "worker": {"resources": {"requests": {"cpu": None}}}}},
            "set dask.worker.resources.requests.cpu",
        ),
    ],
)
def test_inconsistent_values_fail_to_render(chart, values: dict, message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


# ---- what the operator reads --------------------------------------------------------------------


def test_notes_tell_how_to_submit_a_first_job(chart) -> None:
    text = notes(chart, {})
    assert "POST" in text and "/generate" in text and "WARNING: no S3 credentials" in text
    keyed = notes(chart, ALL_ON_CREATED_SECRET)
    assert "authorization: Bearer" in keyed and "https://thorax.example.org" in keyed


def test_readme_installs_with_a_values_file_for_a_real_bucket(chart) -> None:
    text = README.read_text()
    assert re.search(r"^helm install thorax helm/thorax -f my-values\.yaml$", text, flags=re.M)
    values = readme_values()
    config = values["config"]
    assert config["s3Secure"] is True and "amazonaws.com" in config["s3Endpoint"]
    assert not values.get("s3", {}).get("inCluster", {}).get("enabled")
    assert values["existingSecret"]
    for key in ("s3-access-key", "s3-secret-key", "api-keys"):
        assert f"--from-literal={key}=" in text


def test_chart_images_are_built_by_the_dockerfiles(chart) -> None:
    readme = README.read_text()
    for image, dockerfile in [
        (chart.values["image"], "gateway"),
        (chart.values["torchserve"]["image"], "torchserve"),
    ]:
        path = REPO / "docker" / f"{dockerfile}.Dockerfile"
        text = path.read_text()
        assert re.search(r"^USER 10001", text, flags=re.M), f"{path.name} runs as non-root"
        tag = f"{image['repository']}:{chart.metadata['appVersion']}"
        assert f"-f docker/{dockerfile}.Dockerfile" in readme and tag in readme and tag in text


# ---- the fetch-models init container's script, against a real S3 server ----------------------------


@pytest.mark.slow
def test_fetch_models_copies_a_store_that_then_verifies(chart, tmp_path) -> None:
    """The script the fetch-models init container runs (from the rendered ConfigMap), against SeaweedFS:
    the copied store passes `thorax models verify`; keys outside the prefix stay behind."""
    import subprocess
    import sys

    from minio import Minio

    from tests.servers import seaweedfs
    from thorax.store import list_models, verify, write_sums

    store = tmp_path / "store"
    model = store / "cxr64" / "1"
    model.mkdir(parents=True)
    (model / "model_card.json").write_text('{"name": "cxr64"}')
    (model / "generator.onnx").write_bytes(b"onnx bytes")
    write_sums(model)
    (store / "default").write_text("cxr64/1\n")
    docs = render(chart, ALL_ON_CREATED_SECRET)
    script = tmp_path / "fetch_models.py"
    script.write_text(find(docs, "ConfigMap", "thorax-fetch-models")["data"]["fetch_models.py"])
    fetch = find(docs, "Deployment", RELEASE)["spec"]["template"]["spec"]["initContainers"][0]
    env = {k: v for k, v in environment(docs, fetch).items() if isinstance(v, str)}
    prefix = env["MODELS_S3_PREFIX"]
    with seaweedfs(tmp_path / "s3") as endpoint:
        client = Minio(endpoint=endpoint, access_key="test", secret_key="testtest", secure=False)
        client.make_bucket(bucket_name=env["MODELS_S3_BUCKET"])
        uploads = {prefix + p.relative_to(store).as_posix(): p for p in store.rglob("*") if p.is_file()}
        uploads["elsewhere/default"] = store / "default"  # outside the prefix: not copied
        for key, path in uploads.items():
            client.fput_object(bucket_name=env["MODELS_S3_BUCKET"], object_name=key, file_path=str(path))
        env |= {"MODELS_S3_ENDPOINT": endpoint, "MODELS_DIR": str(tmp_path / "copy"),
                "MODELS_S3_ACCESS_KEY": "test", "MODELS_S3_SECRET_KEY": "testtest"}  # fmt: skip
        result = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 0, result.stderr
    copy = tmp_path / "copy"
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == [
        "cxr64/1/SHA256SUMS", "cxr64/1/generator.onnx", "cxr64/1/model_card.json", "default",
    ]  # fmt: skip
    (copied,) = list_models(copy)
    verify(copied)


# ---- Dask: one job over many workers, any number of gateway replicas ------------------------------


def test_dask_deploys_a_scheduler_and_autoscaled_workers_from_the_gateway_image(chart) -> None:
    docs = render(chart, DASK_ONLY)
    gateway_image = gateway(docs)["image"]
    scheduler = find(docs, "Deployment", "thorax-dask-scheduler")["spec"]["template"]["spec"]
    (container,) = scheduler["containers"]
    assert container["image"] == gateway_image and container["command"][:2] == ["dask", "scheduler"]
    port = find(docs, "Service", "thorax-dask-scheduler")["spec"]["ports"][0]["port"]
    env = environment(docs, gateway(docs))
    assert (
        env["THORAX_EXECUTOR"] == "dask"
        and env["THORAX_DASK_SCHEDULER"] == f"tcp://thorax-dask-scheduler:{port}"
    )
    workers = find(docs, "Deployment", "thorax-dask-worker")["spec"]
    spec = workers["template"]["spec"]
    worker = spec["containers"][0]
    assert worker["image"] == gateway_image
    assert worker["command"][:3] == ["dask", "worker", env["THORAX_DASK_SCHEDULER"]]
    assert (
        "--no-nanny" in worker["command"]
        and worker["command"][worker["command"].index("--nthreads") + 1] == "1"
    )
    worker_env = environment(docs, worker)  # the gateway's settings: the same bucket and model store
    assert {k: v for k, v in worker_env.items() if k.startswith("THORAX_")} == {
        k: v for k, v in env.items() if k.startswith("THORAX_")
    }
    assert [c["name"] for c in spec["initContainers"]] == ["fetch-models", "verify-models"]
    hpa = find(docs, "HorizontalPodAutoscaler", "thorax-dask-worker")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "thorax-dask-worker" and "replicas" not in workers
    assert worker["resources"]["requests"]["cpu"] == "1"
    assert find(docs, "Deployment", RELEASE)["spec"]["replicas"] == 2  # the default with Dask
    # readiness includes the scheduler: the gateway's /readyz asks it (service/routes/health.py)
    assert gateway(docs)["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "Jobs run on Dask" in notes(chart, DASK_ONLY)


def test_an_existing_dask_cluster_deploys_no_scheduler(chart) -> None:
    docs = render(chart, DASK_EXISTING)
    assert not [d for d in docs if "dask" in d["metadata"]["name"]]
    env = environment(docs, gateway(docs))
    assert env["THORAX_EXECUTOR"] == "dask" and env["THORAX_DASK_SCHEDULER"] == "tcp://10.0.0.5:8786"
    assert find(docs, "Deployment", RELEASE)["spec"]["replicas"] == 3


def test_the_local_executor_keeps_one_gateway_replica(chart) -> None:
    docs = render(chart, {})
    assert find(docs, "Deployment", RELEASE)["spec"]["replicas"] == 1
    assert environment(docs, gateway(docs))["THORAX_EXECUTOR"] == "local"
    assert render(chart, {"replicaCount": 0})[0]  # scaled to nothing is allowed
