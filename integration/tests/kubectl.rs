//! End-to-end: the real `kubectl` against the real `keelson-server` binary on a loopback port
//! with a temporary data directory (embedded store; one suite also on etcd).
//!
//! `kubectl` is `$KEELSON_KUBECTL` or `kubectl` on PATH; without one these tests say so and pass.
//! Manifests go through kubectl's default `--validate=strict`: the server's `/openapi/v3` tells
//! kubectl that it validates fields itself.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keelson_integration::{bin_dir, spawn_tied};
use serde_json::Value;
use tempfile::TempDir;

fn kubectl_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KEELSON_KUBECTL").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let ok = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then(|| PathBuf::from("kubectl"))
}

/// Skips the test (with a message) when no kubectl is installed.
macro_rules! need_kubectl {
    () => {
        match kubectl_binary() {
            Some(k) => k,
            None => {
                eprintln!("kubectl not found: skipping (set KEELSON_KUBECTL)");
                return;
            }
        }
    };
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// One `keelson-server` process with its own data directory and kubectl home.
struct Server {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    store: String,
    kubectl: PathBuf,
}

impl Server {
    fn start(kubectl: PathBuf, store: &str) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        let mut s = Server {
            child: None,
            dir,
            port: free_port(),
            store: store.to_string(),
            kubectl,
        };
        s.spawn();
        s
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn kubeconfig(&self) -> PathBuf {
        self.data_dir().join("admin.kubeconfig")
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(bin_dir().join("keelson-server"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--store")
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.path().join("server.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        self.child = Some(spawn_tied(cmd).expect("starting keelson-server"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.kubeconfig().exists()
                && self.kubectl(&["get", "--raw", "/readyz"]).status.success()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("keelson-server exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "keelson-server not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: a clean shutdown.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn command(&self, kubeconfig: &Path) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("HOME", self.dir.path().join("home"))
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .arg("--request-timeout=20s");
        cmd
    }

    fn kubectl_with(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        self.command(kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running kubectl")
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(&self.kubeconfig(), args)
    }

    /// Runs kubectl, asserts success, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl, asserts failure, returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should fail, printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("kubectl printed json")
    }

    fn write(&self, name: &str, contents: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).unwrap();
        p.to_string_lossy().into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: c
    image: busybox:1.36
";

#[test]
fn version_discovery_and_namespaces() {
    let k = need_kubectl!();
    let s = Server::start(k, "embedded");
    let v = s.ok(&["version"]);
    assert!(v.contains("Server Version: v1.33.0+keelson"), "{v}");
    let ns = s.ok(&["get", "ns"]);
    assert!(ns.starts_with("NAME"), "server-side table header: {ns}");
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.contains(n), "{ns}");
    }
    assert!(ns.contains("Active"));
    let res = s.ok(&["api-resources"]);
    for (name, short) in [("pods", "po"), ("namespaces", "ns"), ("configmaps", "cm")] {
        assert!(
            res.lines()
                .any(|l| l.starts_with(name) && l.split_whitespace().nth(1) == Some(short)),
            "{res}"
        );
    }
    assert!(res.contains("coordination.k8s.io/v1"), "{res}");
    assert_eq!(s.ok(&["create", "ns", "x"]).trim(), "namespace/x created");
    let x = s.json(&["get", "ns", "x"]);
    assert_eq!(x["status"]["phase"], "Active");
    assert!(x["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    let err = s.fails(&["create", "ns", "x"]);
    assert!(
        err.contains("AlreadyExists") && err.contains("\"x\""),
        "{err}"
    );
    assert_eq!(s.ok(&["get", "--raw", "/healthz"]), "ok");
    assert_eq!(s.ok(&["get", "--raw", "/livez"]), "ok");
}

#[test]
fn configmaps_round_trip_label_annotate_patch_delete() {
    let k = need_kubectl!();
    let s = Server::start(k, "embedded");
    s.ok(&["create", "ns", "x"]);
    s.ok(&["create", "configmap", "c", "--from-literal=a=b", "-n", "x"]);
    let list = s.json(&["get", "cm", "-n", "x"]);
    assert_eq!(list["items"][0]["data"]["a"], "b");
    assert_eq!(list["items"][0]["metadata"]["namespace"], "x");
    let table = s.ok(&["get", "cm", "-n", "x"]);
    assert!(table.contains("DATA") && table.contains("c "), "{table}");
    s.ok(&["label", "cm", "c", "-n", "x", "app=web"]);
    s.ok(&["annotate", "cm", "c", "-n", "x", "note=hello"]);
    s.ok(&[
        "patch",
        "cm",
        "c",
        "-n",
        "x",
        "--type=merge",
        "-p",
        r#"{"data":{"z":"1"}}"#,
    ]);
    s.ok(&[
        "patch",
        "cm",
        "c",
        "-n",
        "x",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/data/a"}]"#,
    ]);
    let c = s.json(&["get", "cm", "c", "-n", "x"]);
    assert_eq!(c["metadata"]["labels"]["app"], "web");
    assert_eq!(c["metadata"]["annotations"]["note"], "hello");
    assert_eq!(c["data"], serde_json::json!({"z": "1"}));
    // Selectors.
    s.ok(&["create", "configmap", "other", "-n", "x"]);
    let sel = s.ok(&["get", "cm", "-n", "x", "-l", "app=web", "-o", "name"]);
    assert_eq!(sel.trim(), "configmap/c");
    let sel = s.ok(&[
        "get",
        "cm",
        "-n",
        "x",
        "-l",
        "app notin (web)",
        "-o",
        "name",
    ]);
    assert_eq!(sel.trim(), "configmap/other");
    let sel = s.ok(&[
        "get",
        "cm",
        "-n",
        "x",
        "--field-selector",
        "metadata.name=other",
        "-o",
        "name",
    ]);
    assert_eq!(sel.trim(), "configmap/other");
    let all = s.ok(&["get", "cm", "-A", "-o", "name"]);
    assert_eq!(all.lines().count(), 2, "{all}");
    // Paging: kubectl follows `continue` tokens.
    for i in 0..5 {
        s.ok(&["create", "configmap", &format!("p{i}"), "-n", "x"]);
    }
    let paged = s.ok(&["get", "cm", "-n", "x", "--chunk-size=2", "-o", "name"]);
    assert_eq!(paged.lines().count(), 7, "{paged}");
    // Secrets.
    s.ok(&[
        "create",
        "secret",
        "generic",
        "s",
        "--from-literal=k=v",
        "-n",
        "x",
    ]);
    let sec = s.json(&["get", "secret", "s", "-n", "x"]);
    assert_eq!(sec["data"]["k"], "dg==");
    assert_eq!(sec["type"], "Opaque");
    // Delete.
    assert_eq!(
        s.ok(&["delete", "cm", "c", "-n", "x"]).trim(),
        "configmap \"c\" deleted"
    );
    let err = s.fails(&["get", "cm", "c", "-n", "x"]);
    assert!(err.contains("NotFound") && err.contains("\"c\""), "{err}");
    let err = s.fails(&["create", "configmap", "c", "-n", "missing"]);
    assert!(err.contains("namespaces \"missing\" not found"), "{err}");
}

#[test]
fn watch_sees_created_pod() {
    let k = need_kubectl!();
    let s = Server::start(k, "embedded");
    let mut watch = s
        .command(&s.kubeconfig())
        .args(["get", "pods", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get pods -w");
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The watch has listed (nothing) once it is running; give it a moment to connect.
    std::thread::sleep(Duration::from_millis(1500));
    let manifest = s.write("pod.yaml", POD);
    s.ok(&["create", "-f", &manifest]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let hit = line.starts_with("web ") && line.contains("Pending");
                seen.push(line);
                if hit {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(found, "watch printed {seen:?}");
}

#[test]
fn pods_tables_status_and_invalid_manifests() {
    let k = need_kubectl!();
    let s = Server::start(k, "embedded");
    let manifest = s.write("pod.yaml", POD);
    s.ok(&["create", "-f", &manifest]);
    let pod = s.json(&["get", "pod", "web"]);
    assert_eq!(pod["status"]["phase"], "Pending");
    assert_eq!(pod["spec"]["restartPolicy"], "Always");
    assert_eq!(pod["metadata"]["namespace"], "default");
    let t = s.ok(&["get", "pods"]);
    let header: Vec<&str> = t.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    assert!(
        t.contains("web") && t.contains("0/1") && t.contains("Pending"),
        "{t}"
    );
    s.ok(&[
        "patch",
        "pod",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running","podIP":"10.88.0.7"}}"#,
    ]);
    // Scheduling goes through the binding subresource; spec.nodeName is not updatable.
    let err = s.fails(&[
        "patch",
        "pod",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"nodeName":"n1"}}"#,
    ]);
    assert!(err.contains("pod updates may not change fields"), "{err}");
    let binding = s.write(
        "binding.json",
        r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"web"},"target":{"kind":"Node","name":"n1"}}"#,
    );
    s.ok(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/web/binding",
        "-f",
        &binding,
    ]);
    let wide = s.ok(&["get", "pods", "-o", "wide"]);
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    );
    let row = wide.lines().nth(1).unwrap();
    assert!(
        row.contains("Running") && row.contains("10.88.0.7") && row.contains("n1"),
        "{wide}"
    );
    let sel = s.ok(&[
        "get",
        "pods",
        "--field-selector",
        "spec.nodeName=n1",
        "-o",
        "name",
    ]);
    assert_eq!(sel.trim(), "pod/web");
    // A pod without an image: 422 naming the field.
    let bad = s.write(
        "bad.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\nspec:\n  containers:\n  - name: c\n",
    );
    let err = s.fails(&["create", "-f", &bad]);
    assert!(
        err.contains("is invalid") && err.contains("spec.containers[0].image: Required value"),
        "{err}"
    );
    let bad = s.write(
        "unknown.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: u\nbogus: 1\n",
    );
    let err = s.fails(&["create", "-f", &bad]);
    assert!(err.contains("unknown field \"bogus\""), "{err}");
    let bad = s.write(
        "badname.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n",
    );
    let err = s.fails(&["create", "-f", &bad]);
    assert!(err.contains("metadata.name: Invalid value"), "{err}");
    // A wrong type: 400 naming what could not be decoded.
    let bad = s.write(
        "badtype.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: t\nspec:\n  containers: 5\n",
    );
    let err = s.fails(&["create", "-f", &bad]);
    assert!(err.contains("BadRequest"), "{err}");
    // Leases exist and table.
    let lease = s.write(
        "lease.yaml",
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: n1\n  namespace: kube-node-lease\nspec:\n  holderIdentity: n1\n",
    );
    s.ok(&["create", "-f", &lease]);
    let t = s.ok(&["get", "leases", "-n", "kube-node-lease"]);
    assert!(t.contains("HOLDER") && t.contains("n1"), "{t}");
    // A pod bound to a node terminates gracefully until its agent (or a forced delete) ends it.
    s.ok(&["delete", "pod", "web", "--wait=false"]);
    let t = s.ok(&["get", "pod", "web"]);
    assert!(t.contains("Terminating"), "{t}");
    s.ok(&["delete", "pod", "web", "--grace-period=0", "--force"]);
    assert!(s.ok(&["get", "pods", "-o", "name"]).trim().is_empty());
    // Deleting a namespace deletes what is in it.
    s.ok(&["create", "ns", "gone"]);
    s.ok(&["create", "configmap", "c", "-n", "gone"]);
    s.ok(&["delete", "ns", "gone"]);
    s.ok(&["create", "ns", "gone"]);
    assert!(
        s.ok(&["get", "cm", "-n", "gone", "-o", "name"])
            .trim()
            .is_empty()
    );
}

#[test]
fn apply_creates_then_patches() {
    let k = need_kubectl!();
    let s = Server::start(k, "embedded");
    let first = "apiVersion: v1
kind: Pod
metadata:
  name: app
  labels: {tier: a, old: x}
spec:
  containers:
  - name: main
    image: busybox:1.36
    env: [{name: A, value: \"1\"}]
  - name: side
    image: busybox:1.36
";
    let manifest = s.write("app.yaml", first);
    assert_eq!(s.ok(&["apply", "-f", &manifest]).trim(), "pod/app created");
    let second = first.replace("tier: a, old: x", "tier: b").replace(
        "  - name: side\n    image: busybox:1.36",
        "  - name: side\n    image: busybox:1.37",
    );
    s.write("app.yaml", &second);
    assert_eq!(
        s.ok(&["apply", "-f", &manifest]).trim(),
        "pod/app configured"
    );
    let pod = s.json(&["get", "pod", "app"]);
    assert_eq!(pod["metadata"]["labels"], serde_json::json!({"tier": "b"}));
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2, "{pod}");
    assert_eq!(
        containers[0]["env"],
        serde_json::json!([{"name": "A", "value": "1"}])
    );
    assert_eq!(containers[1]["image"], "busybox:1.37");
    assert!(
        pod["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );
    assert_eq!(
        s.ok(&["apply", "-f", &manifest]).trim(),
        "pod/app unchanged"
    );
    // What a pod cannot change is refused with the field named.
    s.write("app.yaml", &second.replace("value: \"1\"", "value: \"2\""));
    let err = s.fails(&["apply", "-f", &manifest]);
    assert!(
        err.contains("is invalid") && err.contains("spec: Forbidden"),
        "{err}"
    );
    // A strategic merge patch from `kubectl patch` (its default type).
    s.ok(&[
        "patch",
        "pod",
        "app",
        "-p",
        r#"{"spec":{"containers":[{"name":"main","image":"busybox:1.37"}]}}"#,
    ]);
    let pod = s.json(&["get", "pod", "app"]);
    assert_eq!(pod["spec"]["containers"][0]["image"], "busybox:1.37");
    assert_eq!(pod["spec"]["containers"][0]["env"][0]["name"], "A");
}

#[test]
fn nodes_service_accounts_and_events() {
    let k = need_kubectl!();
    let s = Server::start(k, "embedded");
    s.ok(&["create", "serviceaccount", "robot"]);
    let t = s.ok(&["get", "sa"]);
    assert!(t.contains("SECRETS") && t.contains("robot"), "{t}");
    let node = s.write(
        "node.yaml",
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels: {node-role.kubernetes.io/worker: \"\"}\n",
    );
    s.ok(&["apply", "-f", &node]);
    s.ok(&[
        "patch",
        "node",
        "n1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True"}],"addresses":[{"type":"InternalIP","address":"127.0.0.1"}],"nodeInfo":{"kubeletVersion":"v1.33.0","osImage":"Debian","kernelVersion":"6.1","containerRuntimeVersion":"keelson://0.1.0","machineID":"","systemUUID":"","bootID":"","kubeProxyVersion":"","operatingSystem":"linux","architecture":"amd64"}}}"#,
    ]);
    let wide = s.ok(&["get", "nodes", "-o", "wide"]);
    let row = wide.lines().nth(1).unwrap_or_default();
    for cell in [
        "n1",
        "Ready",
        "worker",
        "v1.33.0",
        "127.0.0.1",
        "keelson://0.1.0",
    ] {
        assert!(row.contains(cell), "{wide}");
    }
    s.ok(&["cordon", "n1"]);
    assert!(s.ok(&["get", "no"]).contains("Ready,SchedulingDisabled"));
    s.ok(&["run", "web", "--image=busybox"]);
    let uid = s.json(&["get", "pod", "web"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let ev = s.write(
        "ev.yaml",
        &format!(
            "apiVersion: v1\nkind: Event\nmetadata: {{name: web.1}}\ninvolvedObject: {{kind: Pod, name: web, namespace: default, uid: {uid}}}\nreason: Scheduled\nmessage: Successfully assigned default/web to n1\ntype: Normal\ncount: 1\nsource: {{component: default-scheduler}}\n"
        ),
    );
    s.ok(&["create", "-f", &ev]);
    let t = s.ok(&["get", "events"]);
    assert!(t.contains("Scheduled") && t.contains("pod/web"), "{t}");
    let d = s.ok(&["describe", "pod", "web"]);
    assert!(d.contains("Successfully assigned default/web to n1"), "{d}");
}

#[test]
fn stale_update_conflicts() {
    let k = need_kubectl!();
    let s = Server::start(k, "embedded");
    s.ok(&["create", "configmap", "c", "--from-literal=a=b"]);
    let old = s.ok(&["get", "cm", "c", "-o", "json"]);
    let old_path = s.write("old.json", &old);
    s.ok(&["label", "cm", "c", "k=v"]);
    let err = s.fails(&["replace", "-f", &old_path]);
    assert!(
        err.contains("Conflict") && err.contains("the object has been modified"),
        "{err}"
    );
    // Without a resourceVersion the replace is unconditional.
    let mut v: Value = serde_json::from_str(&old).unwrap();
    v["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    v["data"]["a"] = "c".into();
    let fresh = s.write("fresh.json", &v.to_string());
    s.ok(&["replace", "-f", &fresh]);
    assert_eq!(s.json(&["get", "cm", "c"])["data"]["a"], "c");
}

#[test]
fn credentials_anonymous_client_certs_and_restart() {
    let k = need_kubectl!();
    let mut s = Server::start(k, "embedded");
    let admin = std::fs::read_to_string(s.kubeconfig()).unwrap();
    let ca_data = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .unwrap()
        .to_string();
    let server = format!("https://127.0.0.1:{}", s.port);
    let config = |user: &str| {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca_data}\nusers:\n- name: u\n  user:\n{user}\ncontexts:\n- name: k\n  context:\n    cluster: k\n    user: u\ncurrent-context: k\n"
        )
    };
    // No credentials: 401 with a Status (kubectl itself would prompt for a password).
    let (code, body) = anonymous_get(&s, "/api/v1/namespaces");
    assert_eq!(code, 401, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Unauthorized");
    let (code, _) = anonymous_get(&s, "/healthz");
    assert_eq!(code, 200);
    let wrong = s.write("wrong.kubeconfig", &config("    token: nope"));
    let out = s.kubectl_with(Path::new(&wrong), &["get", "ns"]);
    assert!(!out.status.success());
    // The node token works.
    let node_token = std::fs::read_to_string(s.data_dir().join("node-token")).unwrap();
    let node = s.write(
        "node.kubeconfig",
        &config(&format!("    token: {}", node_token.trim())),
    );
    let out = s.kubectl_with(Path::new(&node), &["get", "ns", "default", "-o", "name"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A client certificate signed by the CA works.
    let pki = s.data_dir().join("pki");
    let ca_cert = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "jane");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let certs = s.write(
        "cert.kubeconfig",
        &config(&format!(
            "    client-certificate-data: {}\n    client-key-data: {}",
            b64(&cert.pem()),
            b64(&key.serialize_pem())
        )),
    );
    let out = s.kubectl_with(Path::new(&certs), &["get", "ns", "default", "-o", "name"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A certificate from another CA is refused.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let other = params.self_signed(&other_key).unwrap();
    let foreign = s.write(
        "foreign.kubeconfig",
        &config(&format!(
            "    client-certificate-data: {}\n    client-key-data: {}",
            b64(&other.pem()),
            b64(&other_key.serialize_pem())
        )),
    );
    let out = s.kubectl_with(Path::new(&foreign), &["get", "ns"]);
    assert!(!out.status.success());
    // Restart: same credentials, same objects.
    s.ok(&["create", "ns", "kept"]);
    s.stop();
    s.spawn();
    assert_eq!(std::fs::read_to_string(s.kubeconfig()).unwrap(), admin);
    assert_eq!(
        s.ok(&["get", "ns", "kept", "-o", "name"]).trim(),
        "namespace/kept"
    );
}

/// GET `path` over HTTPS (trusting the server's CA) without credentials: status and body.
fn anonymous_get(s: &Server, path: &str) -> (u16, String) {
    keelson_integration::init_crypto();
    let ca = std::fs::read(s.data_dir().join("pki/ca.crt")).unwrap();
    let url = format!("https://127.0.0.1:{}{path}", s.port);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
            .build()
            .unwrap();
        let resp = client.get(url).send().await.expect("anonymous request");
        let code = resp.status().as_u16();
        (code, resp.text().await.unwrap_or_default())
    })
}

/// etcd (Debian's `etcd-server`) on loopback ports, killed on drop.
struct Etcd {
    child: Child,
    _dir: TempDir,
    port: u16,
}

impl Etcd {
    fn start() -> Option<Etcd> {
        let bin = std::env::var_os("KEELSON_ETCD")
            .map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from);
        if !bin.exists() {
            eprintln!("{} not found: skipping the etcd suite", bin.display());
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (port, peer) = (free_port(), free_port());
        let mut cmd = Command::new(bin);
        cmd.arg("--name=k")
            .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{port}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{port}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=k=http://127.0.0.1:{peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_tied(cmd).expect("starting etcd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Etcd {
            child,
            _dir: dir,
            port,
        })
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn etcd_store_serves_kubectl() {
    let k = need_kubectl!();
    let Some(etcd) = Etcd::start() else { return };
    let s = Server::start(k, &format!("etcd://127.0.0.1:{}", etcd.port));
    assert!(s.ok(&["get", "ns"]).contains("kube-system"));
    s.ok(&["create", "ns", "x"]);
    s.ok(&["create", "configmap", "c", "--from-literal=a=b", "-n", "x"]);
    s.ok(&["label", "cm", "c", "-n", "x", "app=web"]);
    let c = s.json(&["get", "cm", "c", "-n", "x"]);
    assert_eq!(c["data"]["a"], "b");
    assert_eq!(c["metadata"]["labels"]["app"], "web");
    let old = s.write("old.json", &c.to_string());
    s.ok(&["annotate", "cm", "c", "-n", "x", "n=1"]);
    let err = s.fails(&["replace", "-f", &old]);
    assert!(err.contains("Conflict"), "{err}");
    let manifest = s.write("pod.yaml", POD);
    s.ok(&["create", "-f", &manifest, "-n", "x"]);
    // A watch from resourceVersion 0 replays the current pods, then ends at its timeout.
    let out = s.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/x/pods?watch=1&timeoutSeconds=1",
    ]);
    assert!(
        out.contains("\"type\":\"ADDED\"") && out.contains("\"web\""),
        "{out}"
    );
    s.ok(&["delete", "cm", "c", "-n", "x"]);
    s.fails(&["get", "cm", "c", "-n", "x"]);
}
