//! The Helm chart with the real `helm` binary and `kubernetes-validate` (both installed
//! by `scripts/install-deps`), and the scaling guard against the Kubernetes API.
//!
//! No Kubernetes API server can run here, so the scaling guard is tested against a
//! loopback HTTP server that answers like one: the same path
//! (`/apis/apps/v1/namespaces/{ns}/statefulsets/{name}`), the same JSON, the same
//! bearer-token authentication.

use crate::common;
use std::collections::BTreeSet;

use crate::common::dashboard::{dashboard, dashboard_metric_names, dashboard_panels};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::common::{TOKEN, spawn_kiln, text};
use serde_json::Value;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/kiln").canonicalize().unwrap()
}

/// Kiln's tools directory (`scripts/install-deps`): `$KILN_TOOLS_DIR`, else
/// `~/.cache/kiln/tools`.
fn tools() -> PathBuf {
    std::env::var_os("KILN_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/kiln/tools"))
}

fn helm() -> PathBuf {
    let helm = tools().join("bin/helm");
    assert!(helm.is_file(), "helm is installed at {}: run scripts/install-deps", helm.display());
    helm
}

/// The Python of the virtual environment that holds kubernetes-validate and PyYAML.
fn python() -> PathBuf {
    let python = tools().join("python/bin/python3");
    assert!(python.is_file(), "kubernetes-validate's environment is at {}: run scripts/install-deps", python.display());
    python
}

/// `helm template` with `--set` values; the rendered YAML, or the failure's text.
fn render(sets: &[&str]) -> Result<String, String> {
    let mut command = Command::new(helm());
    command.args(["template", "kiln", chart().to_str().unwrap(), "--namespace", "farm"]);
    for set in sets {
        command.args(["--set", set]);
    }
    let output = command.output().unwrap();
    if output.status.success() { Ok(String::from_utf8(output.stdout).unwrap()) } else { Err(text(&output)) }
}

/// Parses multi-document YAML with PyYAML (a dependency of kubernetes-validate).
fn documents(yaml: &str) -> Vec<Value> {
    let mut child = Command::new(python())
        .args(["-c", "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn env_of(statefulset: &Value) -> Vec<Value> {
    statefulset["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone()
}

fn env_value(statefulset: &Value, name: &str) -> Option<Value> {
    env_of(statefulset).into_iter().find(|e| e["name"] == name)
}

const VALUE_SETS: [(&str, &[&str]); 9] = [
    ("defaults", &[]),
    (
        "parallel-s3-secret",
        &[
            "parallelCompilation.enabled=true",
            "parallelCompilation.replicas=3",
            "parallelCompilation.sccache.enabled=true",
            "parallelCompilation.sccache.s3.bucket=feldera-sccache",
            "parallelCompilation.sccache.s3.endpoint=minio.extra.svc.cluster.local:9000",
            "parallelCompilation.sccache.s3.existingSecret=sccache-s3-secret",
        ],
    ),
    (
        "irsa",
        &[
            "parallelCompilation.enabled=true",
            "parallelCompilation.replicas=2",
            "parallelCompilation.sccache.enabled=true",
            "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::123456789012:role/kiln",
        ],
    ),
    ("disabled-with-replicas", &["parallelCompilation.enabled=false", "parallelCompilation.replicas=3"]),
    ("api-from-one-namespace", &["networkPolicy.apiFrom[0].namespaceSelector.matchLabels.team=ci"]),
    ("tls", &["tls.enabled=true", "tls.secretName=kiln-leader-tls"]),
    (
        "depset-volume",
        &[
            "depset.path=/opt/team/depset",
            "depset.volume.persistentVolumeClaim.claimName=kiln-depset",
            "depset.volume.persistentVolumeClaim.readOnly=true",
        ],
    ),
    // Every value of a chart ready for production at once.
    (
        "production",
        &[
            "parallelCompilation.enabled=true",
            "parallelCompilation.replicas=3",
            "resources.requests.cpu=4",
            "resources.requests.memory=12Gi",
            "resources.requests.ephemeral-storage=4Gi",
            "resources.limits.cpu=7500m",
            "resources.limits.memory=24Gi",
            "resources.limits.ephemeral-storage=20Gi",
            "startupProbe.periodSeconds=15",
            "startupProbe.failureThreshold=240",
            "startupProbe.timeoutSeconds=3",
            "podDisruptionBudget.minAvailable=2",
            "podDisruptionBudget.unhealthyPodEvictionPolicy=IfHealthyBudget",
            "metrics.serviceMonitor.enabled=true",
            "metrics.serviceMonitor.interval=15s",
            "metrics.serviceMonitor.scrapeTimeout=5s",
            "metrics.serviceMonitor.labels.release=prometheus",
            "metrics.grafanaDashboard.enabled=true",
            "metrics.grafanaDashboard.labelKey=dashboards",
            "metrics.grafanaDashboard.labelValue=kiln",
            "metrics.grafanaDashboard.annotations.grafana_folder=Kiln",
            "metrics.grafanaDashboard.namespace=monitoring",
            "apiToken.protectMetrics=true",
            "tls.enabled=true",
            "tls.secretName=kiln-leader-tls",
        ],
    ),
    ("without-user-namespaces", &["sandbox.userNamespaces=false"]),
];

/// Kinds defined by CRDs (the Prometheus Operator's), which kubernetes-validate has no
/// schema for: it warns and skips them, and the tests check their shape themselves.
const CRD_KINDS: [&str; 1] = ["ServiceMonitor"];

/// `helm lint` passes and every value set renders (1), and every rendered set passes
/// `kubernetes-validate --strict` (2): every object of a built-in kind is validated,
/// and only the CRD kinds are skipped.
#[test]
fn the_chart_lints_renders_and_validates() {
    let lint = Command::new(helm()).arg("lint").arg(chart()).output().unwrap();
    assert!(lint.status.success(), "helm lint: {}", text(&lint));
    let dir = tempfile::tempdir().unwrap();
    for (name, sets) in VALUE_SETS {
        let yaml = render(sets).unwrap_or_else(|e| panic!("{name} renders: {e}"));
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        let validate =
            Command::new(python()).args(["-m", "kubernetes_validate", "--strict"]).arg(&file).output().unwrap();
        let output = text(&validate);
        assert!(validate.status.success(), "{name} passes kubernetes-validate --strict: {output}");
        let built_in = documents(&yaml).iter().filter(|d| !CRD_KINDS.iter().any(|kind| d["kind"] == *kind)).count();
        assert_eq!(output.matches("passed for resource").count(), built_in, "{name}: each object validated: {output}");
        for skipped in output.lines().filter(|line| line.contains("Couldn't find schema")) {
            assert!(CRD_KINDS.iter().any(|kind| skipped.contains(&format!("kind {kind} "))), "{name}: {skipped}");
        }
    }
}

/// 3. What each value set must produce.
#[test]
fn each_value_set_produces_what_it_says() {
    let defaults = documents(&render(&[]).unwrap());
    let sts = find(&defaults, "StatefulSet", "kiln-compiler-server");
    assert_eq!(sts["spec"]["replicas"], 1);
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(env_value(sts, "KILN_WORKERS").unwrap()["value"], "1");
    assert_eq!(env_value(sts, "KILN_SCCACHE").unwrap()["value"], "off", "sccache is off by default");
    // The seed's guard by default; failover after two minutes.
    assert_eq!(env_value(sts, "KILN_ON_SCALING").unwrap()["value"], "panic");
    assert_eq!(env_value(sts, "KILN_FAILOVER_AFTER").unwrap()["value"], "2m");
    let healing = documents(&render(&["lifecycle.onScaling=reshard", "lifecycle.failoverAfter=0"]).unwrap());
    let healing = find(&healing, "StatefulSet", "kiln-compiler-server");
    assert_eq!(env_value(healing, "KILN_ON_SCALING").unwrap()["value"], "reshard");
    assert_eq!(env_value(healing, "KILN_FAILOVER_AFTER").unwrap()["value"], "0");
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    // Builds as a user of their own: the pod in a user namespace, the member root
    // there (and only there), and told to refuse to start outside one.
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["hostUsers"], false);
    assert_eq!(pod["securityContext"]["runAsUser"], 0);
    assert_eq!(env_value(sts, "KILN_REQUIRE_USER_NAMESPACE").unwrap()["value"], "true");
    assert_eq!(container["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let added = container["securityContext"]["capabilities"]["add"].as_array().unwrap();
    assert!(added.iter().any(|c| c == "SYS_ADMIN") && added.iter().any(|c| c == "SETUID"), "{added:?}");
    // Secrets are mounted under /etc/kiln, which no build's view holds
    // (kiln_compiler_worker::sandbox::ETC_FOR_BUILDS).
    for mount in container["volumeMounts"].as_array().unwrap() {
        let path = mount["mountPath"].as_str().unwrap();
        let etc = path.strip_prefix("/etc/").map(|rest| rest.split('/').next().unwrap_or_default());
        assert!(
            etc.is_none_or(|first| !kiln_compiler_worker::sandbox::ETC_FOR_BUILDS.contains(&first)),
            "{path} is in a build's view"
        );
    }
    let shared = documents(&render(&["sandbox.userNamespaces=false"]).unwrap());
    let shared = find(&shared, "StatefulSet", "kiln-compiler-server");
    let pod = &shared["spec"]["template"]["spec"];
    assert!(pod["hostUsers"].is_null() && pod["securityContext"]["runAsUser"] == 10001, "{pod}");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(env_value(shared, "KILN_REQUIRE_USER_NAMESPACE").is_none());
    assert!(sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap() >= 30);
    assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"], "20Gi");
    let leader = find(&defaults, "Service", "kiln-leader");
    assert_eq!(
        leader["spec"]["selector"]["statefulset.kubernetes.io/pod-name"], "kiln-compiler-server-0",
        "the leader Service selects ordinal 0"
    );
    let headless = find(&defaults, "Service", "kiln-compiler-server");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let role = find(&defaults, "Role", "kiln-compiler-server");
    assert_eq!(role["rules"][0]["resources"][0], "statefulsets");
    assert_eq!(role["rules"][0]["verbs"], serde_json::json!(["get"]));
    assert_eq!(role["rules"][0]["resourceNames"][0], "kiln-compiler-server", "only its own StatefulSet");
    let binding = find(&defaults, "RoleBinding", "kiln-compiler-server");
    assert_eq!(binding["subjects"][0]["name"], "kiln-compiler-server");
    let token = find(&defaults, "Secret", "kiln-cluster-token");
    assert!(token["data"]["token"].as_str().unwrap().len() >= 48);
    // Members reach each other on the leader's port; the API's
    // clients come from where the values say (by default the release's namespace).
    let policy = find(&defaults, "NetworkPolicy", "kiln-compiler-server");
    assert_eq!(policy["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    assert_eq!(policy["spec"]["podSelector"], sts["spec"]["selector"], "it covers the members");
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{policy}");
    assert_eq!(rules[0]["from"][0]["podSelector"], sts["spec"]["selector"], "members from members");
    assert_eq!(rules[0]["ports"][0]["port"], 8470);
    assert_eq!(rules[1]["from"], serde_json::json!([{"podSelector": {}}]));
    let one_namespace = documents(&render(VALUE_SETS[4].1).unwrap());
    let policy = find(&one_namespace, "NetworkPolicy", "kiln-compiler-server");
    assert_eq!(
        policy["spec"]["ingress"][1]["from"],
        serde_json::json!([{"namespaceSelector": {"matchLabels": {"team": "ci"}}}])
    );
    let closed = documents(&render(&["networkPolicy.apiFrom=null"]).unwrap());
    let policy = find(&closed, "NetworkPolicy", "kiln-compiler-server");
    assert_eq!(policy["spec"]["ingress"].as_array().unwrap().len(), 1, "no API rule (an empty one admits all)");
    assert_eq!(env_value(sts, "KILN_LISTEN").unwrap()["value"], "0.0.0.0:8470");
    let bound = documents(&render(&["leader.bindAddress=10.1.2.3"]).unwrap());
    let bound_sts = find(&bound, "StatefulSet", "kiln-compiler-server");
    assert_eq!(env_value(bound_sts, "KILN_LISTEN").unwrap()["value"], "10.1.2.3:8470", "it binds what the values say");
    assert!(render(&["leader.bindAddress=everywhere"]).is_err(), "not an address: refused by the schema");
    let off = documents(&render(&["networkPolicy.enabled=false"]).unwrap());
    assert!(!off.iter().any(|d| d["kind"] == "NetworkPolicy"));
    // The API wants a token by default, generated like the
    // cluster token and mounted as a file readable by the member only.
    let api = find(&defaults, "Secret", "kiln-api-token");
    assert!(api["data"]["token"].as_str().unwrap().len() >= 48);
    assert_eq!(env_value(sts, "KILN_API_TOKEN_FILE").unwrap()["value"], "/etc/kiln/api-token/token");
    assert!(env_value(sts, "KILN_API_TOKEN").is_none(), "no token in the environment");
    let volumes = sts["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    let api_volume = volumes.iter().find(|v| v["name"] == "api-token").expect("the API token is mounted");
    assert_eq!(api_volume["secret"]["secretName"], "kiln-api-token");
    assert_eq!(api_volume["secret"]["defaultMode"], 0o400);
    // With existing Secrets (the GitOps path: `lookup` sees nothing under
    // `helm template` or Argo CD), nothing is generated and the named ones are used.
    let gitops = documents(
        &render(&["clusterToken.existingSecret=farm-cluster-token", "apiToken.existingSecret=farm-api-token"]).unwrap(),
    );
    assert!(!gitops.iter().any(|d| d["kind"] == "Secret"), "no generated Secret: {gitops:?}");
    let sts_gitops = find(&gitops, "StatefulSet", "kiln-compiler-server");
    let names: Vec<&Value> = sts_gitops["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["secret"]["secretName"])
        .collect();
    assert!(
        names.contains(&&Value::from("farm-cluster-token")) && names.contains(&&Value::from("farm-api-token")),
        "{names:?}"
    );

    let parallel = documents(&render(VALUE_SETS[1].1).unwrap());
    let sts = find(&parallel, "StatefulSet", "kiln-compiler-server");
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(env_value(sts, "KILN_WORKERS").unwrap()["value"], "3");
    assert_eq!(env_value(sts, "KILN_SCCACHE_BUCKET").unwrap()["value"], "feldera-sccache");
    assert_eq!(env_value(sts, "KILN_SCCACHE_ENDPOINT").unwrap()["value"], "minio.extra.svc.cluster.local:9000");
    assert_eq!(env_value(sts, "KILN_SCCACHE_USE_SSL").unwrap()["value"], "false");
    assert_eq!(env_value(sts, "KILN_SCCACHE_KEY_PREFIX").unwrap()["value"], "sccache");
    assert!(env_value(sts, "AWS_ACCESS_KEY_ID").is_none(), "no cache key in the environment: {sts}");
    assert!(env_value(sts, "AWS_SECRET_ACCESS_KEY").is_none(), "no cache secret in the environment: {sts}");
    assert_eq!(env_value(sts, "KILN_SCCACHE_CREDENTIALS_DIR").unwrap()["value"], "/etc/kiln/s3-credentials");
    let volume = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "s3-credentials")
        .unwrap_or_else(|| panic!("the Secret is mounted as files: {sts}"));
    assert_eq!(volume["secret"]["secretName"], "sccache-s3-secret");
    assert_eq!(volume["secret"]["defaultMode"], 0o400, "readable by the member's user only");

    let irsa = documents(&render(VALUE_SETS[2].1).unwrap());
    let sts = find(&irsa, "StatefulSet", "kiln-compiler-server");
    assert!(env_value(sts, "KILN_SCCACHE_CREDENTIALS_DIR").is_none(), "IRSA takes no Secret");
    assert_eq!(env_value(sts, "KILN_SCCACHE_BUCKET").unwrap()["value"], "sccache-bucket", "the seed's default bucket");
    let account = find(&irsa, "ServiceAccount", "kiln-compiler-server");
    assert_eq!(account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"], "arn:aws:iam::123456789012:role/kiln");

    // TLS mounts the kubernetes.io/tls Secret (cert-manager's
    // keys) readable by the member only, and switches every URL and probe to https.
    let tls = documents(&render(VALUE_SETS[5].1).unwrap());
    let sts = find(&tls, "StatefulSet", "kiln-compiler-server");
    assert_eq!(env_value(sts, "KILN_LEADER").unwrap()["value"], "https://kiln-leader.farm.svc:8470");
    assert_eq!(env_value(sts, "KILN_TLS_CERT").unwrap()["value"], "/etc/kiln/tls/tls.crt");
    assert_eq!(env_value(sts, "KILN_TLS_KEY").unwrap()["value"], "/etc/kiln/tls/tls.key");
    assert_eq!(env_value(sts, "KILN_TLS_CA").unwrap()["value"], "/etc/kiln/tls/ca.crt");
    let pod = &sts["spec"]["template"]["spec"];
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "tls").expect("the TLS Secret");
    assert_eq!(volume["secret"]["secretName"], "kiln-leader-tls");
    assert_eq!(volume["secret"]["defaultMode"], 0o400);
    let container = &pod["containers"][0];
    assert!(
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "tls" && m["mountPath"] == "/etc/kiln/tls")
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert_eq!(container["livenessProbe"]["httpGet"]["scheme"], "HTTPS");
    let plain = find(&defaults, "StatefulSet", "kiln-compiler-server");
    assert!(env_value(plain, "KILN_LEADER").unwrap()["value"].as_str().unwrap().starts_with("http://"));
    assert!(env_value(plain, "KILN_TLS_CERT").is_none(), "no TLS unless asked");
    assert_eq!(plain["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["scheme"], "HTTP");

    // The operator's set from the image (a path) or from a volume.
    let with_set = documents(&render(VALUE_SETS[6].1).unwrap());
    let sts = find(&with_set, "StatefulSet", "kiln-compiler-server");
    assert_eq!(env_value(sts, "KILN_DEPSET").unwrap()["value"], "/opt/team/depset");
    let pod = &sts["spec"]["template"]["spec"];
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "depset").expect("the set's volume");
    assert_eq!(volume["persistentVolumeClaim"]["claimName"], "kiln-depset");
    let mount =
        pod["containers"][0]["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "depset").unwrap();
    assert_eq!((mount["mountPath"].as_str(), mount["readOnly"].as_bool()), (Some("/opt/team/depset"), Some(true)));
    let in_image = documents(&render(&["depset.path=/opt/kiln/depset"]).unwrap());
    let sts = find(&in_image, "StatefulSet", "kiln-compiler-server");
    assert_eq!(env_value(sts, "KILN_DEPSET").unwrap()["value"], "/opt/kiln/depset");
    assert!(!sts["spec"]["template"]["spec"]["volumes"].as_array().unwrap().iter().any(|v| v["name"] == "depset"));
    assert!(env_value(find(&defaults, "StatefulSet", "kiln-compiler-server"), "KILN_DEPSET").is_none(), "built-in set");

    let disabled = documents(&render(VALUE_SETS[3].1).unwrap());
    let sts = find(&disabled, "StatefulSet", "kiln-compiler-server");
    assert_eq!(sts["spec"]["replicas"], 1, "enabled: false means one replica whatever replicas says");
    assert_eq!(env_value(sts, "KILN_WORKERS").unwrap()["value"], "1");
}

/// Whether every label of a selector's `matchLabels` (at least one) is among `labels`.
fn selects(match_labels: &Value, labels: &Value) -> bool {
    match_labels.as_object().is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels[k.as_str()] == *v))
}

/// A chart ready for production. The defaults request resources
/// sized for compiling, give the first start 30 minutes, and keep a
/// PodDisruptionBudget; the ServiceMonitor and the dashboard come only when asked,
/// and every value says what it asks.
#[test]
fn production_values_produce_what_they_say() {
    let defaults = documents(&render(&[]).unwrap());
    let sts = find(&defaults, "StatefulSet", "kiln-compiler-server");
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["resources"],
        serde_json::json!({
            "requests": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "2Gi"},
            "limits": {"memory": "8Gi", "ephemeral-storage": "10Gi"}
        }),
        "sized for compiling, no CPU limit"
    );
    let startup = &container["startupProbe"];
    assert_eq!(startup["httpGet"], container["livenessProbe"]["httpGet"], "the liveness probe's endpoint");
    assert_eq!(startup["httpGet"]["path"], "/healthz");
    let window = startup["periodSeconds"].as_u64().unwrap() * startup["failureThreshold"].as_u64().unwrap();
    assert!(window >= 30 * 60, "a first start gets 30 minutes: {startup}");
    let budget = find(&defaults, "PodDisruptionBudget", "kiln-compiler-server");
    assert_eq!(budget["apiVersion"], "policy/v1");
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert!(budget["spec"].get("minAvailable").is_none(), "{budget}");
    assert_eq!(budget["spec"]["selector"], sts["spec"]["selector"], "it covers the members");
    assert!(selects(&budget["spec"]["selector"]["matchLabels"], &sts["spec"]["template"]["metadata"]["labels"]));
    assert!(!defaults.iter().any(|d| d["kind"] == "ServiceMonitor"), "no ServiceMonitor unless asked");
    assert!(!defaults.iter().any(|d| d["kind"] == "ConfigMap"), "no dashboard unless asked");

    let production = documents(&render(VALUE_SETS[7].1).unwrap());
    let sts = find(&production, "StatefulSet", "kiln-compiler-server");
    let pod_labels = &sts["spec"]["template"]["metadata"]["labels"];
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["resources"],
        serde_json::json!({
            "requests": {"cpu": 4, "memory": "12Gi", "ephemeral-storage": "4Gi"},
            "limits": {"cpu": "7500m", "memory": "24Gi", "ephemeral-storage": "20Gi"}
        })
    );
    let startup = &container["startupProbe"];
    assert_eq!(
        (&startup["periodSeconds"], &startup["failureThreshold"], &startup["timeoutSeconds"]),
        (&Value::from(15), &Value::from(240), &Value::from(3))
    );
    assert_eq!(startup["httpGet"]["scheme"], "HTTPS", "TLS reaches the startup probe too");

    let budget = find(&production, "PodDisruptionBudget", "kiln-compiler-server");
    assert_eq!(budget["spec"]["minAvailable"], 2, "minAvailable, when set, is used");
    assert!(budget["spec"].get("maxUnavailable").is_none(), "not both: {budget}");
    assert_eq!(budget["spec"]["unhealthyPodEvictionPolicy"], "IfHealthyBudget");
    assert!(selects(&budget["spec"]["selector"]["matchLabels"], pod_labels), "{budget}");

    // The ServiceMonitor scrapes /metrics through the Service of the leader, the only
    // member that serves it, and not the headless Service of every member.
    let monitor = find(&production, "ServiceMonitor", "kiln-compiler-server");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    let selector = &monitor["spec"]["selector"]["matchLabels"];
    let leader = find(&production, "Service", "kiln-leader");
    assert!(selects(selector, &leader["metadata"]["labels"]), "{selector} selects {leader}");
    let headless = find(&production, "Service", "kiln-compiler-server");
    assert!(!selects(selector, &headless["metadata"]["labels"]), "{selector} must not select {headless}");
    let endpoints = monitor["spec"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1, "{monitor}");
    let endpoint = &endpoints[0];
    assert_eq!(endpoint["path"], "/metrics");
    assert!(leader["spec"]["ports"].as_array().unwrap().iter().any(|p| p["name"] == endpoint["port"]), "{endpoint}");
    assert_eq!((&endpoint["interval"], &endpoint["scrapeTimeout"]), (&Value::from("15s"), &Value::from("5s")));
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(endpoint["tlsConfig"]["serverName"], "kiln-leader.farm.svc", "the name the certificate holds");
    assert_eq!(endpoint["tlsConfig"]["ca"]["secret"], serde_json::json!({"name": "kiln-leader-tls", "key": "ca.crt"}));
    assert_eq!(
        endpoint["authorization"],
        serde_json::json!({"type": "Bearer", "credentials": {"name": "kiln-api-token", "key": "token"}}),
        "a protected /metrics is scraped with the API token"
    );

    let dashboard_map = find(&production, "ConfigMap", "kiln-dashboard");
    assert_eq!(dashboard_map["metadata"]["namespace"], "monitoring", "where the sidecar looks");
    assert_eq!(dashboard_map["metadata"]["labels"]["dashboards"], "kiln");
    assert_eq!(dashboard_map["metadata"]["annotations"]["grafana_folder"], "Kiln");
    let shipped: Value = serde_json::from_str(dashboard_map["data"]["kiln.json"].as_str().unwrap()).unwrap();
    assert_eq!(shipped, dashboard(), "the chart's dashboards/kiln.json, whole");

    // Alone, without TLS or a protected /metrics: plain http, no credentials; and the
    // sidecar's conventional label.
    let plain =
        documents(&render(&["metrics.serviceMonitor.enabled=true", "metrics.grafanaDashboard.enabled=true"]).unwrap());
    let endpoint = &find(&plain, "ServiceMonitor", "kiln-compiler-server")["spec"]["endpoints"][0];
    assert_eq!(endpoint["scheme"], "http");
    assert!(endpoint.get("tlsConfig").is_none() && endpoint.get("authorization").is_none(), "{endpoint}");
    let dashboard_map = find(&plain, "ConfigMap", "kiln-dashboard");
    assert_eq!(dashboard_map["metadata"]["labels"]["grafana_dashboard"], "1");
    assert!(dashboard_map["metadata"].get("namespace").is_none(), "the release's namespace");

    let off = documents(&render(&["podDisruptionBudget.enabled=false", "startupProbe.enabled=false"]).unwrap());
    assert!(!off.iter().any(|d| d["kind"] == "PodDisruptionBudget"));
    let container = &find(&off, "StatefulSet", "kiln-compiler-server")["spec"]["template"]["spec"]["containers"][0];
    assert!(container.get("startupProbe").is_none());
}

/// The dashboard parses, has its panels, queries through its
/// Prometheus datasource variable, and uses only metrics the leader exports.
#[test]
fn the_dashboard_has_its_panels_and_uses_only_exported_metrics() {
    let json = dashboard();
    assert_eq!(json["uid"], "kiln");
    let variables = json["templating"]["list"].as_array().unwrap();
    let datasource = variables.iter().find(|v| v["name"] == "datasource").expect("a datasource variable");
    assert_eq!((&datasource["type"], &datasource["query"]), (&Value::from("datasource"), &Value::from("prometheus")));

    let panels = dashboard_panels(&json);
    let titles: BTreeSet<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for title in [
        "Builds finished by status",
        "Pipelines by status",
        "Build duration",
        "Upload duration",
        "Queue depth per ordinal",
        "Cache hit rate by count",
        "Cache hit rate by time",
        "Member health",
        "Disk use per member",
        "Leader data volume use",
        "Build progress of builds in flight",
        "Members missing (failover)",
        "Pipelines moved by resharding",
    ] {
        assert!(titles.contains(title), "no panel {title:?} in {titles:?}");
    }
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{} has no targets", panel["title"]));
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
            assert!(target["expr"].as_str().is_some_and(|e| e.contains("kiln_")), "{}: {target}", panel["title"]);
        }
    }

    // That each of these is in a real scrape is checked by the cache test, on a farm
    // that built something (`kiln/tests/e2e/cache.rs`).
    let names = dashboard_metric_names(&json);
    for used in [
        "kiln_builds_finished_total",
        "kiln_build_duration_seconds_bucket",
        "kiln_upload_duration_seconds_bucket",
        "kiln_queue_depth",
        "kiln_cache_hits_total",
        "kiln_cache_misses_total",
        "kiln_cache_hit_read_seconds_total",
        "kiln_cache_miss_compile_seconds_total",
        "kiln_member_healthy",
        "kiln_disk_used_percent",
        "kiln_leader_data_disk_used_percent",
        "kiln_build_crates_done",
        "kiln_build_crates_total",
        "kiln_member_missing",
        "kiln_resharded_pipelines_total",
    ] {
        assert!(names.contains(used), "the dashboard shows {used}: {names:?}");
    }

    // The helper itself: nested rows, templating, and no name taken from inside a word.
    let sample = serde_json::json!({
        "panels": [
            {"type": "row", "panels": [{"targets": [{"expr": "sum(rate(kiln_a_total[5m])) / xkiln_b + kiln_"}]}]},
            {"targets": [{"expr": "histogram_quantile(0.9, kiln_c_seconds_bucket{job=~\"$job\"})"}]}
        ],
        "templating": {"list": [{"query": {"query": "label_values(kiln_d, job)"}}, {"query": "kiln_e"}]}
    });
    let expected = ["kiln_a_total", "kiln_c_seconds_bucket", "kiln_d", "kiln_e"].map(String::from);
    assert_eq!(dashboard_metric_names(&sample), BTreeSet::from(expected));
}

/// 4. Wrong values are refused by the schema, with the value named.
#[test]
fn wrong_values_are_refused_by_the_schema() {
    for (sets, expected) in [
        (&["parallelCompilation.replicas=three"][..], "replicas"),
        (&["parallelCompilation.replicas=-1"][..], "replicas"),
        (&["parallelCompilation.sccache.s3.bucketName=x"][..], "bucketName"),
        (&["parallelCompilation.sccache.s3.useSSL=maybe"][..], "useSSL"),
        (&["tls.enabled=true"][..], "secretName"),
        (&["depset.path=relative/set"][..], "path"),
        (&["resources.requests.memory=lots"][..], "memory"),
        (&["resources.request.cpu=2"][..], "request"),
        (&["startupProbe.failureThreshold=0"][..], "failureThreshold"),
        (&["podDisruptionBudget.maxUnavailable=most"][..], "maxUnavailable"),
        (&["metrics.serviceMonitor.interval=often"][..], "interval"),
        (&["metrics.grafanaDashboard.labelValue=not/a/label"][..], "labelValue"),
        (&["lifecycle.onScaling=restart"][..], "onScaling"),
        (&["lifecycle.failoverAfter=soon"][..], "failoverAfter"),
    ] {
        let error = render(sets).expect_err(&format!("{sets:?} is refused"));
        assert!(error.contains("schema") && error.contains(expected), "{sets:?}: {error}");
    }
}

/// A loopback stand-in for the Kubernetes API: one StatefulSet whose replica count
/// the test changes, behind a bearer token.
async fn fake_api(replicas: Arc<AtomicU32>, token: &'static str) -> u16 {
    use axum::http::{HeaderMap, StatusCode};
    let app = axum::Router::new().route(
        "/apis/apps/v1/namespaces/farm/statefulsets/kiln-compiler-server",
        axum::routing::get(move |headers: HeaderMap| {
            let replicas = replicas.clone();
            async move {
                let authorized =
                    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {token}"));
                if !authorized {
                    return (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({"kind": "Status", "code": 401})));
                }
                let body = serde_json::json!({
                    "apiVersion": "apps/v1",
                    "kind": "StatefulSet",
                    "metadata": {"name": "kiln-compiler-server", "namespace": "farm"},
                    "spec": {"replicas": replicas.load(Ordering::SeqCst), "serviceName": "kiln-compiler-server"},
                    "status": {"replicas": replicas.load(Ordering::SeqCst)}
                });
                (StatusCode::OK, axum::Json(body))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// `kiln server` as pod 0 of a StatefulSet whose API is the fake one on `api_port`,
/// with its service account in `dir`.
fn statefulset_member(dir: &Path, api_port: u16, leader_port: u16) -> Vec<String> {
    let account = dir.join("serviceaccount");
    std::fs::create_dir_all(&account).unwrap();
    std::fs::write(account.join("token"), "sa-token\n").unwrap();
    std::fs::write(account.join("namespace"), "farm").unwrap();
    vec![
        "server".into(),
        "--hostname=kiln-compiler-server-0".into(),
        "--kubernetes=true".into(),
        format!("--kubernetes-api=http://127.0.0.1:{api_port}"),
        format!("--kubernetes-service-account-dir={}", account.display()),
        "--kubernetes-poll=200ms".into(),
        format!("--cluster-token={TOKEN}"),
        format!("--data-dir={}", dir.join("data").display()),
        format!("--build-root={}", dir.join("build").display()),
        format!("--depset-cache={}", common::depset_cache().display()),
        format!("--listen=127.0.0.1:{leader_port}"),
        "--profile=dev".into(),
        "--sccache=off".into(),
    ]
}

/// 5. A member reads N from its StatefulSet, fires the scaling guard with the exact
/// message when the replica count changes, and restarts with the new count.
#[tokio::test(flavor = "multi_thread")]
async fn the_scaling_guard_fires_when_the_statefulset_is_scaled() {
    let replicas = Arc::new(AtomicU32::new(2));
    let port = fake_api(replicas.clone(), "sa-token").await;
    let dir = tempfile::tempdir().unwrap();
    let leader_port = common::free_port();
    let args = statefulset_member(dir.path(), port, leader_port);
    let mut member = spawn_kiln("member-0", dir.path(), &args);
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = http.get(format!("http://127.0.0.1:{leader_port}/cluster_healthz")).send().await {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["workers_expected"], 2, "N was read from the StatefulSet: {body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the member never served: {}", member.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    replicas.store(3, Ordering::SeqCst);
    let status = member.wait_exit(Duration::from_secs(30)).expect("the member exits when the set is scaled");
    assert!(!status.success());
    let output = member.output();
    assert!(
        output.contains("SCALING DETECTED: StatefulSet has 3 replicas but compiler was started with 2 workers"),
        "{output}"
    );

    // After the scale, a pod restarts with the set's new size even though its
    // KILN_WORKERS still says 2: the StatefulSet is the truth at startup.
    let mut second: Vec<String> = args
        .iter()
        .filter(|a| !["--hostname", "--listen", "--data-dir", "--build-root"].iter().any(|f| a.starts_with(f)))
        .cloned()
        .collect();
    second.extend([
        "--hostname=kiln-compiler-server-1".into(),
        "--workers=2".into(),
        format!("--data-dir={}", dir.path().join("data-1").display()),
        format!("--build-root={}", dir.path().join("build-1").display()),
    ]);
    let mut restarted = spawn_kiln("member-1", dir.path(), &second);
    // Past its identity, its guard and its settings, a member starts preparing its
    // build root: a member that refused its N would have exited before that line.
    common::wait_until(
        "the restarted member prepares its build root",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let output = restarted.output();
            async move { if output.contains("preparing the build root") { Ok(()) } else { Err(output) } }
        },
    )
    .await;
    let early_exit = restarted.child.try_wait().unwrap();
    assert!(early_exit.is_none(), "it runs ({early_exit:?}): {}", restarted.output());
    let output = restarted.output();
    assert!(output.contains("using its 3 replicas") && output.contains("ordinal 1 of 3"), "{output}");
}

/// With `--on-scaling=reshard` (the chart's `lifecycle.onScaling: reshard`), the
/// StatefulSet scaled from 2 to 3 replicas is followed without a restart: the
/// member keeps running, never says SCALING DETECTED, and its leader expects 3.
#[tokio::test(flavor = "multi_thread")]
async fn with_reshard_a_scaled_statefulset_is_followed_without_a_restart() {
    let replicas = Arc::new(AtomicU32::new(2));
    let port = fake_api(replicas.clone(), "sa-token").await;
    let dir = tempfile::tempdir().unwrap();
    let leader_port = common::free_port();
    let mut args = statefulset_member(dir.path(), port, leader_port);
    args.push("--on-scaling=reshard".into());
    let mut member = spawn_kiln("member-0", dir.path(), &args);
    let expects = |n: u32| {
        let url = format!("http://127.0.0.1:{leader_port}/cluster_healthz");
        async move {
            common::wait_until(
                &format!("the leader expects {n}"),
                Duration::from_secs(60),
                Duration::from_millis(100),
                || {
                    let url = url.clone();
                    async move {
                        let body: Value = match reqwest::get(&url).await {
                            Ok(response) => response.json().await.map_err(|e| e.to_string())?,
                            Err(e) => return Err(e.to_string()),
                        };
                        if body["workers_expected"] == n { Ok(()) } else { Err(body.to_string()) }
                    }
                },
            )
            .await
        }
    };
    expects(2).await;
    replicas.store(3, Ordering::SeqCst);
    expects(3).await;
    let early_exit = member.child.try_wait().unwrap();
    assert!(early_exit.is_none(), "it runs ({early_exit:?}): {}", member.output());
    let output = member.output();
    assert!(!output.contains("SCALING DETECTED") && output.contains("resharding to the new N"), "{output}");
}

fn authorized<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    request
}

/// With N from the Kubernetes API, a caller holding the cluster
/// token cannot make the leader panic by reporting another N: its heartbeats and
/// claims are refused (FAILED_PRECONDITION, naming both sizes) and the leader keeps
/// serving; only the API's own count trips the guard.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_reporting_another_n_is_refused_not_believed() {
    let replicas = Arc::new(AtomicU32::new(2));
    let port = fake_api(replicas.clone(), "sa-token").await;
    let dir = tempfile::tempdir().unwrap();
    let leader_port = common::free_port();
    let mut args = statefulset_member(dir.path(), port, leader_port);
    args.push("--protect-metrics=true".into());
    let mut member = spawn_kiln("member-0", dir.path(), &args);
    let url = format!("http://127.0.0.1:{leader_port}");
    let http = reqwest::Client::new();
    common::wait_until("the leader serves", Duration::from_secs(60), Duration::from_millis(100), || async {
        http.get(format!("{url}/healthz")).send().await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    let mut client = kiln_proto::cluster_client::ClusterClient::connect(url.clone()).await.unwrap();
    for (ordinal, workers) in [(1, 99), (5, 2), (0, 1)] {
        let liar = kiln_proto::Member { ordinal, workers, incarnation: 4242, version: "0.1.0".into() };
        let heartbeat = kiln_proto::HeartbeatRequest { member: Some(liar.clone()), ..Default::default() };
        let refused = client.heartbeat(authorized(heartbeat)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("the StatefulSet has 2 replicas"), "{}", refused.message());
        let claim = kiln_proto::ClaimRequest { member: Some(liar), wait_ms: 0, ..Default::default() };
        let refused = client.claim(authorized(claim)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    }
    assert!(member.running(), "the leader keeps running: {}", member.output());
    let (status, body) = {
        let response = http.get(format!("{url}/cluster_healthz")).send().await.unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(body["workers_expected"], 2, "{status} {body}");
    assert!(!member.output().contains("SCALING DETECTED"), "no panic: {}", member.output());

    // A bare `kiln server` leader wants an API token by default: its own, generated
    // in its data directory; with --protect-metrics, /metrics wants it too.
    let token = std::fs::read_to_string(dir.path().join("data/api-token")).unwrap();
    for path in ["/v0/pipelines", "/metrics"] {
        let refused = http.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(refused.status(), 401, "{path} without the token");
        let answered = http.get(format!("{url}{path}")).bearer_auth(token.trim()).send().await.unwrap();
        assert_eq!(answered.status(), 200, "{path} with the token");
    }

    // The API itself is believed.
    replicas.store(3, Ordering::SeqCst);
    member.wait_exit(Duration::from_secs(30)).expect("the member exits when the StatefulSet is scaled");
    assert!(member.output().contains("SCALING DETECTED: StatefulSet has 3 replicas"), "{}", member.output());
}
