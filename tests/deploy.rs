//! The Kubernetes deployment (deploy/kubernetes/) and the container build
//! file (deploy/Dockerfile): every manifest valid against the Kubernetes API
//! schemas, the configuration its ConfigMaps carry accepted by the real
//! binary as the pods would mount it, and the probes, ports and scrape path
//! the ones a running `tactful run` with that configuration serves. The
//! ConfigMaps are laid out the way kubelet mounts them (files reached through
//! a `..data` symlink that an update swaps), so a segment update is tested as
//! a pod would see it.
//!
//! kubernetes-validate, hadolint and PyYAML come from the project's venv
//! (scripts/python-env.sh); without them these tests fail.

mod common;

use common::{http_get, http_get_with, interop_python, repo_path, Pipeline, Topics};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// What a Secret's environment variable holds in these tests: a stand-in
/// token of the length the config asks for.
const SECRET_PLACEHOLDER: &str = "placeholder-secret-of-the-test-0123456789";

/// The manifests kustomization.yaml applies, parsed.
struct Deployment {
    /// File name (in deploy/kubernetes) and each document it holds.
    manifests: Vec<(String, Value)>,
}

impl Deployment {
    fn load() -> Self {
        let kustomization = yaml_documents(&kubernetes_dir().join("kustomization.yaml"));
        let resources = kustomization[0]["resources"].as_array().expect("kustomization.yaml lists resources");
        let manifests = resources
            .iter()
            .flat_map(|resource| {
                let file = resource.as_str().unwrap().to_owned();
                yaml_documents(&kubernetes_dir().join(&file)).into_iter().map(move |document| (file.clone(), document))
            })
            .collect();
        Self { manifests }
    }

    /// The one resource of `kind` (panics if there is not exactly one).
    fn one(&self, kind: &str) -> &Value {
        let found: Vec<&Value> =
            self.manifests.iter().map(|(_, document)| document).filter(|document| document["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "expected one {kind} among the manifests");
        found[0]
    }

    /// The data of the ConfigMap `name`.
    fn config_map(&self, name: &str) -> BTreeMap<String, String> {
        let map = self
            .manifests
            .iter()
            .map(|(_, document)| document)
            .find(|document| document["kind"] == "ConfigMap" && document["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no ConfigMap {name} among the manifests"));
        serde_json::from_value(map["data"].clone()).unwrap()
    }

    /// The StatefulSet's tactful container.
    fn container(&self) -> &Value {
        let containers = self.one("StatefulSet")["spec"]["template"]["spec"]["containers"].as_array().unwrap();
        containers.iter().find(|container| container["name"] == "tactful").expect("a container named tactful")
    }

    /// The container's port named `name`.
    fn container_port(&self, name: &str) -> u16 {
        let ports = self.container()["ports"].as_array().unwrap();
        let port = ports.iter().find(|port| port["name"] == name).unwrap_or_else(|| panic!("no container port {name}"));
        port["containerPort"].as_u64().unwrap().try_into().unwrap()
    }

    /// The configuration file's path, from the container's arguments.
    fn config_argument(&self) -> PathBuf {
        let args: Vec<&str> =
            self.container()["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(args[0], "run", "the container runs the pipeline");
        let at = args.iter().position(|arg| *arg == "--config").expect("the container names its --config");
        PathBuf::from(args[at + 1])
    }

    /// The container's environment as the pod would have it with every
    /// Secret present: literal values as written, each Secret's key as
    /// [`SECRET_PLACEHOLDER`]. Also says which variables come from a
    /// required (non-optional) Secret.
    fn environment(&self) -> (Vec<(String, String)>, Vec<String>) {
        let mut environment = Vec::new();
        let mut required_secrets = Vec::new();
        for variable in self.container()["env"].as_array().unwrap() {
            let name = variable["name"].as_str().unwrap().to_owned();
            let secret = &variable["valueFrom"]["secretKeyRef"];
            if secret.is_object() {
                if secret["optional"] != true {
                    required_secrets.push(name.clone());
                }
                environment.push((name, SECRET_PLACEHOLDER.to_owned()));
            } else {
                environment.push((name, variable["value"].as_str().expect("a literal or a Secret").to_owned()));
            }
        }
        (environment, required_secrets)
    }

    /// Each ConfigMap volume of the pod: (mount path, ConfigMap name).
    fn config_map_mounts(&self) -> Vec<(PathBuf, String)> {
        let pod = &self.one("StatefulSet")["spec"]["template"]["spec"];
        let volumes = pod["volumes"].as_array().unwrap();
        self.container()["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|mount| {
                assert!(mount.get("subPath").is_none(), "a subPath mount is never updated by kubelet: {mount}");
                let volume = volumes.iter().find(|volume| volume["name"] == mount["name"]).unwrap();
                let name = volume["configMap"]["name"].as_str()?;
                Some((PathBuf::from(mount["mountPath"].as_str().unwrap()), name.to_owned()))
            })
            .collect()
    }

    /// Mounts every ConfigMap volume under `root` as kubelet does; returns
    /// the configuration file's path under `root`.
    fn mount(&self, root: &Path) -> PathBuf {
        for (mount_path, name) in self.config_map_mounts() {
            kubelet_write(&under(root, &mount_path), &self.config_map(&name));
        }
        under(root, &self.config_argument())
    }

    /// The mount path (under `root`) of the ConfigMap `name`.
    fn mount_of(&self, root: &Path, name: &str) -> PathBuf {
        let (mount_path, _) = self.config_map_mounts().into_iter().find(|(_, map)| map == name).unwrap();
        under(root, &mount_path)
    }
}

fn kubernetes_dir() -> PathBuf {
    PathBuf::from(repo_path("deploy/kubernetes"))
}

/// `path` (absolute, as in the pod) below `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").expect("an absolute path"))
}

/// Every YAML document of `path`, as JSON, read with PyYAML (the venv's).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))";
    let output = Command::new(interop_python()).args(["-c", script]).arg(path).output().unwrap();
    assert!(output.status.success(), "{} is not YAML: {}", path.display(), String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A tool installed beside the venv's python.
fn venv_tool(name: &str) -> PathBuf {
    let tool = Path::new(&interop_python()).with_file_name(name);
    assert!(tool.exists(), "{} is missing: the venv of scripts/python-env.sh should have it", tool.display());
    tool
}

/// Writes `files` into the ConfigMap volume at `mount` the way kubelet
/// does: into a new timestamped folder, then an atomic rename of a
/// `..data` symlink onto it, with each file a symlink through `..data`;
/// the previous folder is removed afterwards. The first call creates it.
fn kubelet_write(mount: &Path, files: &BTreeMap<String, String>) {
    std::fs::create_dir_all(mount).unwrap();
    let previous = std::fs::read_link(mount.join("..data")).ok();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let folder = format!("..{nanos}");
    std::fs::create_dir(mount.join(&folder)).unwrap();
    for (name, text) in files {
        std::fs::write(mount.join(&folder).join(name), text).unwrap();
    }
    std::os::unix::fs::symlink(&folder, mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    for name in files.keys() {
        if std::fs::symlink_metadata(mount.join(name)).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), mount.join(name)).unwrap();
        }
    }
    if let Some(previous) = previous {
        std::fs::remove_dir_all(mount.join(previous)).unwrap();
    }
}

/// A fresh folder standing for a pod's file system.
fn pod_root(test: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("tactful-deploy-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// `tactful check --config config` with `environment`: (exit code, stdout, stderr).
fn check(config: &Path, environment: &[(String, String)]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tactful"))
        .args(["check", "--config"])
        .arg(config)
        .envs(environment.iter().map(|(name, value)| (name, value)))
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

/// The mounted configuration file, parsed.
fn read_toml(path: &Path) -> toml::Table {
    std::fs::read_to_string(path).unwrap().parse().unwrap()
}

/// The admin listen address the configuration `config` gives.
fn admin_listen(config: &toml::Table) -> std::net::SocketAddr {
    config["admin"]["listen"].as_str().expect("the deployment sets admin.listen").parse().unwrap()
}

#[test]
fn every_manifest_is_valid_against_the_kubernetes_schemas_and_applied_by_the_kustomization() {
    let mut files: Vec<String> = std::fs::read_dir(kubernetes_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    files.sort();
    let deployment = Deployment::load();
    let mut applied: Vec<String> = deployment.manifests.iter().map(|(file, _)| file.clone()).collect();
    applied.dedup();
    applied.sort();
    assert_eq!(applied, files, "kustomization.yaml must apply every manifest of deploy/kubernetes, and only those");

    // --strict rejects unknown fields; a kind without a schema is only a
    // warning there, so every file must say `passed` and nothing else.
    let output = Command::new(venv_tool("kubernetes-validate"))
        .arg("--strict")
        .args(files.iter().map(|file| kubernetes_dir().join(file)))
        .output()
        .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "kubernetes-validate failed:\n{report}");
    for line in report.lines() {
        assert!(line.starts_with("INFO ") && line.contains(" passed for resource "), "{line}\n{report}");
    }
    for file in &files {
        assert!(report.contains(&format!("{file} passed")), "{file} not validated:\n{report}");
    }
}

#[test]
fn the_container_build_file_passes_hadolint_and_matches_the_pod() {
    let dockerfile = repo_path("deploy/Dockerfile");
    let output = Command::new(venv_tool("hadolint")).arg(&dockerfile).output().unwrap();
    assert!(output.status.success(), "hadolint:\n{}", String::from_utf8_lossy(&output.stdout));

    let text = std::fs::read_to_string(&dockerfile).unwrap();
    let instruction = |name: &str| {
        let found: Vec<&str> = text.lines().filter_map(|line| line.strip_prefix(name)).map(str::trim).collect();
        found.last().unwrap_or_else(|| panic!("no {name}in the Dockerfile")).to_string()
    };
    let deployment = Deployment::load();
    let pod = &deployment.one("StatefulSet")["spec"]["template"]["spec"];
    // The image's default command is the one the pod runs, as the user the pod expects.
    let command: Value = serde_json::from_str(&instruction("CMD ")).unwrap();
    assert_eq!(command, deployment.container()["args"]);
    let user = format!("{}:{}", pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]);
    assert_eq!(instruction("USER "), user);
    let exposed: Vec<u16> = instruction("EXPOSE ").split_whitespace().map(|port| port.parse().unwrap()).collect();
    assert_eq!(exposed, vec![deployment.container_port("admin"), deployment.container_port("privacy")]);
    assert_eq!(instruction("ENTRYPOINT "), r#"["/usr/local/bin/tactful"]"#);
}

#[test]
fn the_config_maps_as_a_pod_mounts_them_pass_tactful_check_with_the_secrets_from_the_environment() {
    let deployment = Deployment::load();
    // The segments ConfigMap carries the bundled catalogue.
    let segments = deployment.config_map("tactful-segments");
    assert_eq!(segments["segments.toml"], std::fs::read_to_string(repo_path("deploy/segments.toml")).unwrap());

    let root = pod_root("check");
    let config_path = deployment.mount(&root);
    let (environment, required_secrets) = deployment.environment();
    let (code, stdout, stderr) = check(&config_path, &environment);
    assert_eq!(code, 0, "tactful check of the mounted ConfigMap failed:\n{stderr}");
    assert_eq!(stdout.lines().next().unwrap(), format!("{}: ok", config_path.display()));
    // The segments in force are the mounted file's, every one of them.
    let listed: Vec<&str> = stdout.lines().filter_map(|line| line.trim().strip_prefix("segment ")).collect();
    let listed: Vec<&str> = listed.iter().map(|line| line.split_whitespace().next().unwrap()).collect();
    let catalogue: toml::Table = segments["segments.toml"].parse().unwrap();
    let ids: Vec<&str> =
        catalogue["segment"].as_array().unwrap().iter().map(|segment| segment["id"].as_str().unwrap()).collect();
    assert_eq!(listed, ids);

    let config = read_toml(&config_path);
    // One instance_id for every pod would give them one transactional id:
    // each would fence the others. The default, the host name, is the pod's name.
    assert!(config["kafka"].get("instance_id").is_none(), "kafka.instance_id must be left to the pod's host name");
    assert_eq!(deployment.one("StatefulSet")["spec"]["template"]["spec"].get("setHostnameAsFQDN"), None);

    // The config reads the mounted segment file, not the bundled catalogue:
    // an invalid one fails the check, named by its path in the pod.
    let segments_file = config
        .get("pipeline")
        .and_then(|pipeline| pipeline.get("segments_file"))
        .and_then(|file| file.as_str())
        .expect("pipeline.segments_file names the segments ConfigMap's file (else the bundled catalogue is used)");
    let segments_mount = deployment.mount_of(&root, "tactful-segments");
    kubelet_write(&segments_mount, &BTreeMap::from([("segments.toml".to_owned(), "[[segment]]\nid = 1\n".to_owned())]));
    let (code, _, stderr) = check(&config_path, &environment);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("tactful: {}:2:6: ", config_path.parent().unwrap().join(segments_file).display())),
        "{stderr}"
    );
    kubelet_write(&segments_mount, &segments);

    // Each required Secret reaches the config through its variable: without
    // it, the check fails naming it.
    assert!(!required_secrets.is_empty(), "the API token comes from a Secret");
    for secret in &required_secrets {
        let without: Vec<(String, String)> = environment.iter().filter(|(name, _)| name != secret).cloned().collect();
        let (code, _, stderr) = check(&config_path, &without);
        assert_eq!(code, 1, "the config does not use {secret}");
        assert!(stderr.contains(&format!("names the environment variable `{secret}`, which is not set")), "{stderr}");
    }

    // librdkafka accepts every client property (e.g. a security protocol
    // this build supports), with the Secrets' variables expanded as tactful does.
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", config["kafka"]["bootstrap_servers"].as_str().unwrap());
    if let Some(properties) = config["kafka"].get("client_properties").and_then(|table| table.as_table()) {
        for (name, value) in properties {
            let mut value = value.as_str().unwrap().to_owned();
            for (variable, secret) in &environment {
                value = value.replace(&format!("${{{variable}}}"), secret);
            }
            client.set(name, value);
        }
    }
    let created: Result<rdkafka::producer::BaseProducer, _> = client.create();
    assert!(created.is_ok(), "librdkafka rejects the client properties: {:?}", created.err());
}

/// Starts `tactful run` with the mounted configuration, changed only where
/// the test machine differs from a cluster: the test broker, fresh topics
/// and group, a free admin port (same address), and no security settings
/// (the test broker is plaintext). Returns the pipeline and the
/// configuration as the ConfigMap has it.
fn run_as_mounted(test: &str, deployment: &Deployment, topics: &Topics) -> (Pipeline, toml::Table, PathBuf) {
    let root = pod_root(test);
    let config_path = deployment.mount(&root);
    let as_configured = read_toml(&config_path);
    let mut config = as_configured.clone();
    let admin_port = common::free_port();
    let kafka = config["kafka"].as_table_mut().unwrap();
    kafka.insert("bootstrap_servers".into(), common::bootstrap().into());
    kafka.insert("app_id".into(), topics.prefix.clone().into());
    kafka.insert("group_id".into(), topics.group().into());
    if let Some(properties) = kafka.get_mut("client_properties").and_then(|table| table.as_table_mut()) {
        properties
            .retain(|name, _| !(name == "security.protocol" || name.starts_with("sasl.") || name.starts_with("ssl.")));
    }
    let names = [
        ("browse", &topics.browse),
        ("purchase", &topics.purchase),
        ("location", &topics.location),
        ("consent", &topics.consent),
        ("profiles", &topics.profiles),
        ("dead_letters", &topics.dead_letters),
    ];
    let topic_table: toml::Table = names.iter().map(|(key, name)| (key.to_string(), (*name).clone().into())).collect();
    config.insert("topics".into(), topic_table.into());
    let listen = admin_listen(&as_configured);
    let admin = config["admin"].as_table_mut().unwrap();
    admin.insert("listen".into(), std::net::SocketAddr::new(listen.ip(), admin_port).to_string().into());
    if let Some(center) = config.get_mut("privacy_center").and_then(|table| table.as_table_mut()) {
        let listen: std::net::SocketAddr = center["listen"].as_str().unwrap().parse().unwrap();
        let port = common::free_port();
        center.insert("listen".into(), std::net::SocketAddr::new(listen.ip(), port).to_string().into());
        // No peers on the test machine: this instance owns every partition.
        center.insert("peers".into(), toml::Value::Array(Vec::new()));
    }
    let config_file = config_path.file_name().unwrap().to_str().unwrap().to_owned();
    let config_mount = config_path.parent().unwrap();
    // The changed file goes in as a ConfigMap update would.
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for entry in std::fs::read_dir(config_mount).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.starts_with("..") {
            files.insert(name.clone(), std::fs::read_to_string(config_mount.join(&name)).unwrap());
        }
    }
    files.insert(config_file, toml::to_string(&config).unwrap());
    kubelet_write(config_mount, &files);
    let (environment, _) = deployment.environment();
    let pipeline = Pipeline::launch(config_path, admin_port, root.join("tactful.log"), &environment);
    (pipeline, as_configured, root)
}

/// A log's text without the terminal colour codes of its fields.
fn without_colours(log: &str) -> String {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters m
            chars.by_ref().find(|c| *c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Waits until `path` on the admin port answers 200, within `timeout`.
fn wait_for_ok(pipeline: &Pipeline, path: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while http_get(pipeline.admin_port, path).map(|(status, _)| status) != Some(200) {
        assert!(Instant::now() < deadline, "{path} not 200 after {timeout:?}; log:\n{}", pipeline.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_pod_s_probes_scrape_path_and_token_are_what_tactful_serves_and_sigterm_ends_it_within_the_grace_period() {
    let deployment = Deployment::load();
    let topics = Topics::create("deploy-probes");
    let (pipeline, config, _root) = run_as_mounted("probes", &deployment, &topics);
    let listen = admin_listen(&config);
    // Kubelet and Prometheus reach the pod on its IP, not on loopback.
    assert!(listen.ip().is_unspecified(), "admin.listen {listen} must be every interface of the pod");
    let admin_port = deployment.container_port("admin");
    assert_eq!(admin_port, listen.port(), "the container port is where tactful listens");

    let container = deployment.container();
    let readiness = &container["readinessProbe"]["httpGet"];
    let liveness = &container["livenessProbe"]["httpGet"];
    for probe in [readiness, liveness] {
        assert_eq!(probe["port"], "admin", "a probe names the admin port");
    }
    wait_for_ok(&pipeline, readiness["path"].as_str().unwrap(), Duration::from_secs(60));
    let (status, body) = http_get(pipeline.admin_port, liveness["path"].as_str().unwrap()).unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // A path tactful does not serve is not 200: the checks above can fail.
    assert_eq!(http_get(pipeline.admin_port, "/ready").unwrap().0, 404);

    let annotations = &deployment.one("StatefulSet")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], admin_port.to_string());
    let (status, metrics) = http_get(pipeline.admin_port, annotations["prometheus.io/path"].as_str().unwrap()).unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("# TYPE tactful_"), "no tactful metrics at the scrape path:\n{metrics}");
    let service_port = &deployment.one("Service")["spec"]["ports"][0];
    assert_eq!(service_port["port"].as_u64(), Some(u64::from(admin_port)));
    assert_eq!(service_port["targetPort"], "admin");

    // The privacy center listens on the container's `privacy` port, which
    // the Service publishes, and every peer is a pod of the Service.
    let center = config["privacy_center"].as_table().expect("the privacy center is on");
    let privacy: std::net::SocketAddr = center["listen"].as_str().unwrap().parse().unwrap();
    assert!(privacy.ip().is_unspecified(), "privacy_center.listen {privacy} must be every interface of the pod");
    assert_eq!(deployment.container_port("privacy"), privacy.port());
    let service_port = &deployment.one("Service")["spec"]["ports"][1];
    assert_eq!(
        (service_port["port"].as_u64(), &service_port["targetPort"]),
        (Some(u64::from(privacy.port())), &"privacy".into())
    );
    let replicas = deployment.one("StatefulSet")["spec"]["replicas"].as_u64().unwrap();
    let peers: Vec<&str> = center["peers"].as_array().unwrap().iter().map(|peer| peer.as_str().unwrap()).collect();
    let pods: Vec<String> = (0..replicas).map(|n| format!("http://tactful-{n}.tactful:{}", privacy.port())).collect();
    assert_eq!(peers, pods, "privacy_center.peers lists every pod of the StatefulSet");
    let running = read_toml(&pipeline.config_path);
    let port: std::net::SocketAddr = running["privacy_center"]["listen"].as_str().unwrap().parse().unwrap();
    let (status, head, _) = common::try_http(port.port(), "GET", "/style.css", &[]).unwrap();
    assert_eq!(status, 200, "{head}");
    // Without a signed link, the page refuses.
    assert_eq!(common::try_http(port.port(), "GET", "/?user=nobody", &[]).unwrap().0, 403);

    // The explain API is on, with the token from the Secret's variable.
    assert_eq!(http_get(pipeline.admin_port, "/v1/profiles/nobody").unwrap().0, 401);
    let bearer = format!("Authorization: Bearer {SECRET_PLACEHOLDER}");
    let (status, body) = http_get_with(pipeline.admin_port, "/v1/profiles/nobody", &[&bearer]).unwrap();
    assert_eq!((status, body.as_str()), (404, "no data is held about this user\n"));

    let grace = deployment.one("StatefulSet")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("the pod sets terminationGracePeriodSeconds");
    pipeline.signal("TERM");
    let started = Instant::now();
    let log_path = pipeline.log_path.clone();
    let status = pipeline.wait_for_exit(Duration::from_secs(grace));
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    assert!(status.success(), "SIGTERM: {status} after {:?}; log:\n{log}", started.elapsed());
    assert!(log.contains("shutting down: last batch committed"), "{log}");
}

#[test]
fn a_segment_update_swapped_in_the_way_kubelet_does_is_reloaded_and_a_bad_one_rejected() {
    let deployment = Deployment::load();
    let topics = Topics::create("deploy-reload");
    let (pipeline, _, root) = run_as_mounted("reload", &deployment, &topics);
    wait_for_ok(&pipeline, "/readyz", Duration::from_secs(60));
    let reloads = |result: &str| {
        let (_, metrics) = http_get(pipeline.admin_port, "/metrics").unwrap();
        let prefix = format!("tactful_segment_reloads_total{{result=\"{result}\"}} ");
        metrics.lines().find_map(|line| line.strip_prefix(&prefix).map(|count| count.parse::<u64>().unwrap()))
    };
    let wait_for_reloads = |result: &str, count: u64| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while reloads(result) != Some(count) {
            assert!(Instant::now() < deadline, "no {result} reload 15 s after the swap; log:\n{}", pipeline.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert_eq!(reloads("applied"), None);

    // A new version without its last segment.
    let segments_mount = deployment.mount_of(&root, "tactful-segments");
    let text = deployment.config_map("tactful-segments").remove("segments.toml").unwrap();
    let last = text.rfind("[[segment]]").unwrap();
    let removed: toml::Table = text[last..].parse().unwrap();
    let removed = removed["segment"][0]["id"].as_str().unwrap().to_owned();
    kubelet_write(&segments_mount, &BTreeMap::from([("segments.toml".to_owned(), text[..last].to_owned())]));
    wait_for_reloads("applied", 1);
    let log = without_colours(&pipeline.log());
    let reloaded = log.lines().find(|line| line.contains("segments reloaded")).unwrap();
    assert!(reloaded.contains(&format!("removed=[\"{removed}\"]")), "{reloaded}");

    // An invalid version is rejected; the segments in force stay.
    kubelet_write(&segments_mount, &BTreeMap::from([("segments.toml".to_owned(), "[[segment]]\nid = 1\n".to_owned())]));
    wait_for_reloads("rejected", 1);
    assert_eq!(reloads("applied"), Some(1));
    assert!(pipeline.log().contains("segment file rejected; the segments in force stay"));
    assert!(pipeline.stop().success());
}
