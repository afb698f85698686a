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
        Server::start_with_pki(kubectl, store, None)
    }

    /// A server that shares `replica_of`'s CA, serving credentials and tokens (copied into its
    /// data directory before it starts), as a second replica on the same store would.
    fn start_with_pki(kubectl: PathBuf, store: &str, replica_of: Option<&Server>) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        if let Some(other) = replica_of {
            let data = dir.path().join("data");
            std::fs::create_dir_all(data.join("pki")).unwrap();
            for f in std::fs::read_dir(other.data_dir().join("pki")).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), data.join("pki").join(f.file_name())).unwrap();
            }
            std::fs::copy(other.data_dir().join("node-token"), data.join("node-token")).unwrap();
        }
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
        [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED",
            "NODE",
            "READINESS",
            "GATES"
        ]
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

/// Polls `f` until it holds, failing with `what` after 30 s.
fn eventually(s: &Server, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "{what}\n{}", s.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn describe_shows_events_in_both_versions() {
    let k = need_kubectl!();
    let s = Server::start(k, "embedded");
    // Left to another scheduler: no event from the built-in one.
    let manifest = s.write(
        "pod.yaml",
        &POD.replace("spec:\n", "spec:\n  schedulerName: elsewhere\n"),
    );
    s.ok(&["create", "-f", &manifest]);
    let d = s.ok(&["describe", "pod", "web"]);
    assert!(
        d.lines()
            .any(|l| l.starts_with("Events:") && l.contains("<none>")),
        "{d}"
    );
    let uid = s.json(&["get", "pod", "web"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let ev = s.write(
        "ev.yaml",
        &format!(
            "apiVersion: v1\nkind: Event\nmetadata: {{name: web.1}}\ninvolvedObject: {{apiVersion: v1, kind: Pod, name: web, namespace: default, uid: {uid}}}\nreason: Pulling\nmessage: Pulling image busybox:1.36\ntype: Normal\ncount: 1\nfirstTimestamp: \"2025-01-01T00:00:00Z\"\nlastTimestamp: \"2025-01-01T00:00:00Z\"\nsource: {{component: kubelet, host: n1}}\n"
        ),
    );
    s.ok(&["create", "-f", &ev]);
    // The same kind of event written through events.k8s.io/v1.
    let ev2 = s.write(
        "ev2.yaml",
        &format!(
            "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {{name: web.2}}\neventTime: \"2025-01-01T00:00:01.000000Z\"\nregarding: {{apiVersion: v1, kind: Pod, name: web, namespace: default, uid: {uid}}}\nreason: Pulled\nnote: Successfully pulled image busybox:1.36\ntype: Normal\naction: Pull\nreportingController: kubelet\nreportingInstance: n1\n"
        ),
    );
    s.ok(&["create", "-f", &ev2]);
    let d = s.ok(&["describe", "pod", "web"]);
    assert!(
        d.contains("Events:")
            && d.contains("Pulling image busybox:1.36")
            && d.contains("Successfully pulled image busybox:1.36"),
        "{d}"
    );
    let e = s.ok(&["events"]);
    assert!(e.contains("Pulling") && e.contains("Pod/web"), "{e}");
    let e = s.ok(&["events", "--for", "pod/web"]);
    assert!(e.contains("Successfully pulled"), "{e}");
    let t = s.ok(&["get", "events"]);
    assert!(t.contains("pod/web") && t.contains("Pulled"), "{t}");
    let t = s.ok(&["get", "events.v1.events.k8s.io"]);
    assert!(t.contains("pod/web") && t.contains("Pulling"), "{t}");
    let v1 = s.json(&["get", "events.v1.events.k8s.io", "web.1"]);
    assert_eq!(v1["note"], "Pulling image busybox:1.36");
    assert_eq!(v1["regarding"]["uid"], uid.as_str());
    assert_eq!(v1["deprecatedSource"]["component"], "kubelet");
    let res = s.ok(&["api-resources", "--api-group=events.k8s.io"]);
    assert!(res.contains("events.k8s.io/v1"), "{res}");
}

#[test]
fn delete_namespace_with_content() {
    let k = need_kubectl!();
    let s = Server::start(k, "embedded");
    s.ok(&["create", "ns", "x"]);
    s.ok(&["create", "configmap", "c", "--from-literal=a=b", "-n", "x"]);
    let manifest = s.write("pod.yaml", POD);
    s.ok(&["create", "-f", &manifest, "-n", "x"]);
    let out = s.ok(&["delete", "ns", "x"]);
    assert!(out.contains("namespace \"x\" deleted"), "{out}");
    let err = s.fails(&["get", "ns", "x"]);
    assert!(err.contains("NotFound"), "{err}");
    s.ok(&["create", "ns", "x"]);
    s.fails(&["get", "cm", "c", "-n", "x"]);
    // The default namespaces cannot be deleted.
    let err = s.fails(&["delete", "ns", "default"]);
    assert!(
        err.contains("Forbidden") && err.contains("may not be deleted"),
        "{err}"
    );
    // Content with a finalizer holds a namespace in Terminating.
    s.ok(&["create", "ns", "term"]);
    let held = s.write(
        "held.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  namespace: term\n  finalizers: [example.com/hold]\ndata: {a: b}\n",
    );
    s.ok(&["create", "-f", &held]);
    s.ok(&["delete", "ns", "term", "--wait=false"]);
    let ns = s.ok(&["get", "ns", "term"]);
    assert!(ns.contains("Terminating"), "{ns}");
    let y = s.json(&["get", "ns", "term"]);
    assert_eq!(y["spec"]["finalizers"], serde_json::json!(["kubernetes"]));
    assert!(y["metadata"]["deletionTimestamp"].is_string());
    let err = s.fails(&["create", "configmap", "late", "-n", "term"]);
    assert!(
        err.contains("is forbidden") && err.contains("because it is being terminated"),
        "{err}"
    );
    s.ok(&[
        "patch",
        "cm",
        "held",
        "-n",
        "term",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    eventually(&s, "namespace term was not finalized", || {
        !s.kubectl(&["get", "ns", "term"]).status.success()
    });
}

#[test]
fn server_side_apply_twice_and_dry_runs() {
    let k = need_kubectl!();
    let s = Server::start(k, "embedded");
    let manifest = s.write("pod.yaml", POD);
    let out = s.ok(&[
        "apply",
        "--server-side",
        "-f",
        &manifest,
        "--dry-run=server",
    ]);
    assert!(out.contains("(server dry run)"), "{out}");
    s.fails(&["get", "pod", "web"]);
    let out = s.ok(&["apply", "--server-side", "-f", &manifest]);
    assert!(out.contains("pod/web serverside-applied"), "{out}");
    let changed = POD
        .replace("labels: {app: web}", "labels: {app: web2}")
        .replace("busybox:1.36", "busybox:1.37");
    s.write("pod.yaml", &changed);
    let out = s.ok(&["apply", "--server-side", "-f", &manifest]);
    assert!(out.contains("pod/web serverside-applied"), "{out}");
    let pod = s.json(&["get", "pod", "web"]);
    assert_eq!(pod["spec"]["containers"][0]["image"], "busybox:1.37");
    assert_eq!(
        pod["metadata"]["labels"],
        serde_json::json!({"app": "web2"})
    );
    let managed = s.json(&["get", "pod", "web", "--show-managed-fields"]);
    assert_eq!(
        managed["metadata"]["managedFields"][0]["manager"],
        "kubectl"
    );
    // Server dry runs of create, apply and delete change nothing.
    let out = s.ok(&[
        "create",
        "configmap",
        "c",
        "--from-literal=a=b",
        "--dry-run=server",
    ]);
    assert!(out.contains("(server dry run)"), "{out}");
    s.fails(&["get", "cm", "c"]);
    s.write("pod.yaml", &changed.replace("busybox:1.37", "busybox:1.38"));
    s.ok(&[
        "apply",
        "--server-side",
        "-f",
        &manifest,
        "--dry-run=server",
    ]);
    let pod = s.json(&["get", "pod", "web"]);
    assert_eq!(pod["spec"]["containers"][0]["image"], "busybox:1.37");
    let out = s.ok(&["delete", "pod", "web", "--dry-run=server"]);
    assert!(out.contains("(server dry run)"), "{out}");
    s.ok(&["get", "pod", "web"]);
}

#[test]
fn cascade_orphan_background_and_foreground() {
    let k = need_kubectl!();
    let s = Server::start(k, "embedded");
    let dependent = |owner: &str, name: &str| {
        s.ok(&["create", "configmap", owner, "--from-literal=a=b"]);
        let uid = s.json(&["get", "cm", owner])["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string();
        let dep = s.write(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  ownerReferences:\n  - {{apiVersion: v1, kind: ConfigMap, name: {owner}, uid: {uid}, blockOwnerDeletion: true}}\ndata: {{a: b}}\n"
            ),
        );
        s.ok(&["create", "-f", &dep]);
    };
    dependent("owner1", "orphaned");
    s.ok(&["delete", "cm", "owner1", "--cascade=orphan", "--wait=false"]);
    eventually(&s, "owner1 was not deleted", || {
        !s.kubectl(&["get", "cm", "owner1"]).status.success()
    });
    let dep = s.json(&["get", "cm", "orphaned"]);
    assert!(dep["metadata"].get("ownerReferences").is_none(), "{dep}");

    dependent("owner2", "collected");
    s.ok(&["delete", "cm", "owner2"]);
    eventually(&s, "the dependent of owner2 was not collected", || {
        !s.kubectl(&["get", "cm", "collected"]).status.success()
    });

    dependent("owner3", "first");
    s.ok(&["delete", "cm", "owner3", "--cascade=foreground"]);
    s.fails(&["get", "cm", "first"]);
    s.fails(&["get", "cm", "owner3"]);
    // A dry run of a cascading delete changes nothing.
    dependent("owner4", "stays");
    s.ok(&["delete", "cm", "owner4", "--dry-run=server"]);
    s.ok(&["get", "cm", "owner4"]);
    s.ok(&["get", "cm", "stays"]);
}

/// Node credentials (`<node>:<password>:<node-token>`) under kubectl: the node reads nodes
/// but not secrets, cannot change another node; `kubectl logs` and `kubectl exec` print the
/// server's clear errors for an unbound pod, a node without an agent and an agent that
/// refuses connections.
#[test]
fn node_credentials_and_unreachable_agents() {
    let k = need_kubectl!();
    let s = Server::start(k, "embedded");
    let admin = std::fs::read_to_string(s.kubeconfig()).unwrap();
    let node_token = std::fs::read_to_string(s.data_dir().join("node-token")).unwrap();
    let node_config = admin.replace(
        &format!(
            "token: {}",
            admin
                .lines()
                .find_map(|l| l.trim().strip_prefix("token: "))
                .unwrap()
        ),
        &format!("token: n1:password-one-0123456789:{}", node_token.trim()),
    );
    let node = s.write("n1.kubeconfig", &node_config);
    let as_node = |args: &[&str]| s.kubectl_with(Path::new(&node), args);
    let node_yaml = |name: &str| format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n");
    let n1 = s.write("n1.yaml", &node_yaml("n1"));
    let out = as_node(&["create", "-f", &n1]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.ok(&["create", "-f", &s.write("n2.yaml", &node_yaml("n2"))]);
    let out = as_node(&["label", "node", "n2", "a=b"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"Error from server (Forbidden): nodes "n2" is forbidden: User "system:node:n1" cannot patch resource "nodes""#),
        "{err}"
    );
    let out = as_node(&["get", "secrets", "-A"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Forbidden"));
    let out = as_node(&["get", "nodes", "-o", "name"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "node/n1\nnode/n2\n");

    // The agent of n1 is at a loopback port nothing listens on.
    let port = free_port();
    s.ok(&[
        "patch",
        "node",
        "n1",
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"127.0.0.1"}}],"daemonEndpoints":{{"kubeletEndpoint":{{"Port":{port}}}}}}}}}"#),
    ]);
    let pod = |name: &str, node: &str| {
        let node_line = if node.is_empty() {
            String::new()
        } else {
            format!("  nodeName: {node}\n")
        };
        s.write(
            &format!("{name}.yaml"),
            &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{node_line}  containers:\n  - name: c\n    image: busybox\n"),
        )
    };
    s.ok(&["create", "-f", &pod("on-n1", "n1")]);
    s.ok(&["create", "-f", &pod("on-n2", "n2")]);
    s.ok(&["create", "-f", &pod("pending", "")]);
    let err = s.fails(&["logs", "on-n1"]);
    assert!(
        err.contains(&format!(
            r#"Error from server (ServiceUnavailable): the agent of node "n1" at 127.0.0.1:{port} cannot be reached: connection refused"#
        )),
        "{err}"
    );
    let err = s.fails(&["exec", "on-n1", "--", "ls"]);
    assert!(
        err.contains("cannot be reached: connection refused"),
        "{err}"
    );
    let err = s.fails(&["logs", "on-n2"]);
    assert!(
        err.contains(r#"node "n2" reports no address for its agent"#),
        "{err}"
    );
    let err = s.fails(&["logs", "pending"]);
    assert!(
        err.contains("pod pending does not have a host assigned"),
        "{err}"
    );
}

/// `kubectl explain` reads the server's OpenAPI v3 schemas; strict validation still comes
/// from the server.
#[test]
fn explain_reads_the_published_schemas() {
    let k = need_kubectl!();
    let s = Server::start(k, "embedded");
    let out = s.ok(&["explain", "pod.spec"]);
    assert!(out.contains("FIELD: spec <PodSpec>"), "{out}");
    assert!(
        out.contains("containers\t<[]Container> -required-"),
        "{out}"
    );
    let out = s.ok(&["explain", "pod.spec.containers.resources"]);
    assert!(out.contains("limits\t<map[string]Quantity>"), "{out}");
    let out = s.ok(&["explain", "configmaps"]);
    assert!(out.contains("KIND:       ConfigMap"), "{out}");
    assert!(out.contains("data\t<map[string]string>"), "{out}");
    let out = s.ok(&["explain", "lease.spec"]);
    assert!(out.contains("GROUP:      coordination.k8s.io"), "{out}");
    assert!(out.contains("holderIdentity\t<string>"), "{out}");
    let out = s.ok(&["explain", "services.spec.ports"]);
    assert!(out.contains("targetPort\t<IntOrString>"), "{out}");
    assert!(out.contains("port\t<integer> -required-"), "{out}");
    // An unknown field is still refused under kubectl's default strict validation.
    let bad = s.write("bad.yaml", &POD.replace("spec:\n", "spec:\n  foo: bar\n"));
    let err = s.fails(&["apply", "-f", &bad]);
    assert!(err.contains("unknown field \"spec.foo\""), "{err}");
    let good = s.write("good.yaml", POD);
    assert_eq!(s.ok(&["apply", "-f", &good]).trim(), "pod/web created");
    assert_eq!(
        s.ok(&["apply", "--validate=true", "-f", &good]).trim(),
        "pod/web unchanged"
    );
}

/// Services: `kubectl create service` (protobuf bodies), apply with port merges, defaults,
/// allocated cluster IPs and node ports, the `get` columns, and `cluster-info`.
#[test]
fn services_and_cluster_info() {
    let k = need_kubectl!();
    let s = Server::start(k, "embedded");
    // Older kubectl versions color the line; the words are the same.
    let out: String = s
        .ok(&["cluster-info"])
        .split('\u{1b}')
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part
            } else {
                part.split_once('m').map_or("", |(_, rest)| rest)
            }
        })
        .collect();
    assert!(
        out.contains(&format!(
            "Kubernetes control plane is running at https://127.0.0.1:{}",
            s.port
        )),
        "{out}"
    );
    let kube = s.json(&["get", "svc", "kubernetes", "-n", "default"]);
    assert_eq!(kube["spec"]["clusterIP"], "10.43.0.1");
    assert_eq!(kube["spec"]["ports"][0]["targetPort"], s.port);

    s.ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    s.ok(&[
        "create",
        "service",
        "nodeport",
        "np",
        "--tcp=80:8080",
        "--node-port=30080",
    ]);
    let web = s.json(&["get", "svc", "web"]);
    let ip = web["spec"]["clusterIP"].as_str().unwrap();
    assert!(ip.starts_with("10.43.") && ip != "10.43.0.1", "{web}");
    assert_eq!(web["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(web["spec"]["sessionAffinity"], "None");
    assert_eq!(web["spec"]["ipFamilyPolicy"], "SingleStack");

    let manifest = "apiVersion: v1
kind: Service
metadata:
  name: api
spec:
  selector: {app: api}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: metrics, port: 9090}
";
    let path = s.write("svc.yaml", manifest);
    assert_eq!(s.ok(&["apply", "-f", &path]).trim(), "service/api created");
    s.write("svc.yaml", &manifest.replace("9090", "9091"));
    assert_eq!(
        s.ok(&["apply", "-f", &path]).trim(),
        "service/api configured"
    );
    let api = s.json(&["get", "svc", "api"]);
    let ports: Vec<i64> = api["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [80, 9091], "{api}");

    let out = s.ok(&["get", "svc", "-o", "wide"]);
    let header = out.lines().next().unwrap();
    for col in [
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "AGE",
        "SELECTOR",
    ] {
        assert!(header.contains(col), "{out}");
    }
    let np = out.lines().find(|l| l.starts_with("np ")).unwrap();
    assert!(
        np.contains("NodePort") && np.contains("80:30080/TCP"),
        "{out}"
    );
    let err = s.fails(&[
        "create",
        "service",
        "nodeport",
        "np2",
        "--tcp=80",
        "--node-port=30080",
    ]);
    assert!(err.contains("provided port is already allocated"), "{err}");
    let err = s.fails(&[
        "patch",
        "svc",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"clusterIP":"10.43.1.1"}}"#,
    ]);
    assert!(err.contains("may not change once set"), "{err}");
    assert_eq!(
        s.ok(&[
            "get",
            "svc",
            "-n",
            "kube-system",
            "-l",
            "kubernetes.io/cluster-service=true",
            "-o",
            "name"
        ])
        .trim(),
        ""
    );
}

const NODE: &str = "apiVersion: v1
kind: Node
metadata:
  name: n1
  labels: {kubernetes.io/hostname: n1}
";

/// What the issue asks of kubectl, in the order a new user tries it, on one store backend:
/// cluster-info, nodes, apply twice, wide output, a watch seeing the change, describe with the
/// scheduler's event, label/annotate/patch, explain, invalid manifests, delete.
fn new_user_walkthrough(s: &Server) {
    let info = s.ok(&["cluster-info"]);
    assert!(
        info.contains(&format!(
            "Kubernetes control plane is running at https://127.0.0.1:{}",
            s.port
        )),
        "{info}"
    );

    let node = s.write("node.yaml", NODE);
    s.ok(&["create", "-f", &node]);
    s.ok(&[
        "patch",
        "node",
        "n1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady"}],"allocatable":{"cpu":"2","memory":"4Gi","pods":"110"},"capacity":{"cpu":"2","memory":"4Gi","pods":"110"},"addresses":[{"type":"InternalIP","address":"127.0.0.1"}]}}"#,
    ]);
    let nodes = s.ok(&["get", "nodes"]);
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("n1 ") && l.contains(" Ready ")),
        "{nodes}"
    );

    // A watch started before the pod exists.
    let watch_out = s.dir.path().join("watch.out");
    let mut watch = s
        .command(&s.kubeconfig())
        .args(["get", "pods", "-w", "-L", "tier", "--request-timeout=0"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&watch_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting kubectl get -w");

    let manifest = s.write("web.yaml", POD);
    let out = s.ok(&["apply", "-f", &manifest]);
    assert!(out.contains("pod/web created"), "{out}");
    eventually(s, "the scheduler binds web to n1", || {
        s.json(&["get", "pod", "web"])["spec"]["nodeName"] == "n1"
    });
    let wide = s.ok(&["get", "pods", "-o", "wide"]);
    let row = wide.lines().find(|l| l.starts_with("web ")).unwrap_or("");
    assert!(
        wide.lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            == [
                "NAME",
                "READY",
                "STATUS",
                "RESTARTS",
                "AGE",
                "IP",
                "NODE",
                "NOMINATED",
                "NODE",
                "READINESS",
                "GATES"
            ],
        "{wide}"
    );
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert!(
        cells.get(2) == Some(&"Pending") && cells.get(6) == Some(&"n1"),
        "{wide}"
    );

    // The watch has printed web (how many lines depends on when its initial list ran relative
    // to the create and the binding) before the change is applied.
    let web_lines = || -> Vec<String> {
        std::fs::read_to_string(&watch_out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("web "))
            .map(str::to_string)
            .collect()
    };
    eventually(s, "the watch prints web", || !web_lines().is_empty());
    let changed = s.write(
        "web2.yaml",
        &POD.replace("labels: {app: web}", "labels: {app: web, tier: front}")
            .replace("busybox:1.36", "busybox:1.37"),
    );
    let out = s.ok(&["apply", "-f", &changed]);
    assert!(out.contains("pod/web configured"), "{out}");
    let pod = s.json(&["get", "pod", "web"]);
    assert_eq!(pod["spec"]["containers"][0]["image"], "busybox:1.37");
    assert_eq!(pod["metadata"]["labels"]["tier"], "front");
    eventually(s, "the watch prints web's change (TIER front)", || {
        web_lines()
            .iter()
            .any(|l| l.split_whitespace().last() == Some("front"))
    });
    let lines = web_lines();
    assert!(
        lines.len() >= 2 && !lines[0].contains("front"),
        "the watch printed web before and after the change: {lines:?}"
    );
    let _ = watch.kill();
    let _ = watch.wait();

    let describe = s.ok(&["describe", "pod", "web"]);
    assert!(
        describe.contains("Node:") && describe.contains("n1"),
        "{describe}"
    );
    assert!(
        describe.contains("Events:")
            && describe.contains("Scheduled")
            && describe.contains("Successfully assigned default/web to n1"),
        "{describe}"
    );

    s.ok(&["label", "pod", "web", "env=dev"]);
    s.ok(&["annotate", "pod", "web", "note=hello"]);
    s.ok(&[
        "patch",
        "pod",
        "web",
        "--type=strategic",
        "-p",
        r#"{"spec":{"activeDeadlineSeconds":600}}"#,
    ]);
    let pod = s.json(&["get", "pod", "web"]);
    assert_eq!(pod["metadata"]["labels"]["env"], "dev");
    assert_eq!(pod["metadata"]["annotations"]["note"], "hello");
    assert_eq!(pod["spec"]["activeDeadlineSeconds"], 600);
    let err = s.fails(&["label", "pod", "web", "env=prod"]);
    assert!(err.contains("already has a value"), "{err}");

    let explain = s.ok(&["explain", "pod.spec"]);
    assert!(
        explain.contains("containers") && explain.contains("FIELDS"),
        "{explain}"
    );

    let unknown = s.write(
        "unknown.yaml",
        &POD.replace("name: web", "name: bad1")
            .replace("spec:\n", "spec:\n  bogus: 1\n"),
    );
    let err = s.fails(&["apply", "-f", &unknown]);
    assert!(
        err.contains("unknown field") && err.contains("bogus"),
        "{err}"
    );
    let no_containers = s.write(
        "empty.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad2\nspec:\n  containers: []\n",
    );
    let err = s.fails(&["apply", "-f", &no_containers]);
    assert!(
        err.contains("spec.containers") && err.contains("Required"),
        "{err}"
    );
    let bad_name = s.write("badname.yaml", &POD.replace("name: web", "name: Bad_Name"));
    let err = s.fails(&["apply", "-f", &bad_name]);
    assert!(
        err.contains("Invalid value") && err.contains("Bad_Name"),
        "{err}"
    );
    s.fails(&["get", "pod", "bad1"]);

    // No agent runs here: force the deletion rather than wait for one to confirm it.
    s.ok(&["delete", "pod", "web", "--grace-period=0", "--force"]);
    let err = s.fails(&["get", "pod", "web"]);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
}

#[test]
fn new_user_walkthrough_embedded() {
    let k = need_kubectl!();
    let s = Server::start(k, "embedded");
    new_user_walkthrough(&s);
}

#[test]
fn new_user_walkthrough_etcd() {
    let k = need_kubectl!();
    let Some(etcd) = Etcd::start() else { return };
    let s = Server::start(k, &format!("etcd://127.0.0.1:{}", etcd.port));
    new_user_walkthrough(&s);
}

/// A 3-member etcd cluster on loopback, killed on drop.
struct EtcdCluster {
    members: Vec<Child>,
    _dir: TempDir,
    ports: Vec<u16>,
}

impl EtcdCluster {
    fn start() -> Option<EtcdCluster> {
        let bin = PathBuf::from("/usr/bin/etcd");
        if !bin.exists() {
            eprintln!(
                "{} not found: skipping the etcd cluster suite",
                bin.display()
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let mut cmd = Command::new(&bin);
            cmd.arg(format!("--name=m{i}"))
                .arg(format!(
                    "--data-dir={}",
                    dir.path().join(format!("m{i}")).display()
                ))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                ))
                .arg(format!("--initial-cluster={cluster}"))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=keelson-kubectl-test")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            members.push(spawn_tied(cmd).expect("starting etcd"));
        }
        let c = EtcdCluster {
            members,
            _dir: dir,
            ports: ports.iter().map(|(c, _)| *c).collect(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in &c.ports {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(Instant::now() < deadline, "etcd cluster did not start");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Some(c)
    }

    /// The store URL naming every member, the first one first after `rotate` steps.
    fn url(&self, rotate: usize) -> String {
        let mut ports = self.ports.clone();
        ports.rotate_left(rotate);
        let eps: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("etcd://{}", eps.join(","))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

/// Two keelson-server replicas on a 3-member etcd: what one writes the other serves and
/// watches, one scheduler leads, and after the leader is SIGKILLed the other schedules.
#[test]
fn two_replicas_on_a_three_member_etcd() {
    let k = need_kubectl!();
    let Some(etcd) = EtcdCluster::start() else {
        return;
    };
    let mut a = Server::start(k.clone(), &etcd.url(0));
    let mut b = Server::start_with_pki(k, &etcd.url(1), Some(&a));

    a.ok(&["create", "configmap", "shared", "--from-literal=k=1"]);
    assert_eq!(b.json(&["get", "cm", "shared"])["data"]["k"], "1");
    let watch_out = b.dir.path().join("watch.out");
    let mut watch = b
        .command(&b.kubeconfig())
        .args([
            "get",
            "cm",
            "shared",
            "-w",
            "-o",
            "jsonpath={.data.k}{\"\\n\"}",
            "--request-timeout=0",
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&watch_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting kubectl get -w");
    std::thread::sleep(Duration::from_millis(500));
    a.ok(&[
        "patch",
        "cm",
        "shared",
        "--type=merge",
        "-p",
        r#"{"data":{"k":"2"}}"#,
    ]);
    eventually(&b, "replica b's watch sees replica a's write", || {
        std::fs::read_to_string(&watch_out)
            .unwrap_or_default()
            .lines()
            .any(|l| l == "2")
    });
    let _ = watch.kill();
    let _ = watch.wait();

    let node = a.write("node.yaml", NODE);
    a.ok(&["create", "-f", &node]);
    a.ok(&[
        "patch",
        "node",
        "n1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True"}],"allocatable":{"cpu":"2","memory":"4Gi","pods":"110"}}}"#,
    ]);
    let holder = |s: &Server| -> String {
        let out = s.kubectl(&[
            "get",
            "lease",
            "keelson-scheduler",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let mut leader = String::new();
    eventually(&a, "one replica holds the scheduler lease", || {
        leader = holder(&a);
        !leader.is_empty()
    });
    let a_leads = a.log().contains(&leader);
    assert_ne!(
        a_leads,
        b.log().contains(&leader),
        "exactly one replica logs {leader}"
    );

    let manifest = a.write("web.yaml", POD);
    a.ok(&["apply", "-f", &manifest]);
    eventually(&b, "the leader binds web", || {
        b.json(&["get", "pod", "web"])["spec"]["nodeName"] == "n1"
    });

    // SIGKILL the leader; the survivor takes the lease over and schedules the next pod.
    let (dead, alive) = if a_leads {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    if let Some(mut c) = dead.child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let second = alive.write("web2.yaml", &POD.replace("name: web", "name: web2"));
    alive.ok(&["apply", "-f", &second]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if alive.json(&["get", "pod", "web2"])["spec"]["nodeName"] == "n1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the surviving replica never scheduled web2\n{}",
            alive.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let new_holder = holder(alive);
    assert!(
        !new_holder.is_empty() && new_holder != leader,
        "lease holder {new_holder:?} after {leader:?} died"
    );
    assert!(alive.log().contains(&new_holder));
}

/// SIGKILL while kubectl writes, on one backend: after a restart every acknowledged write is
/// there, and a watch from a resourceVersion taken before the kill resumes with every write
/// after it, in order.
fn sigkill_during_writes(s: &mut Server) {
    s.ok(&["create", "configmap", "c0", "--from-literal=i=0"]);
    let from: i64 = s
        .ok(&[
            "get",
            "cm",
            "c0",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .trim()
        .parse()
        .expect("numeric resourceVersion");
    let kubeconfig = s.kubeconfig();
    let writer = {
        let (home, kubectl) = (s.dir.path().join("home"), s.kubectl.clone());
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            for i in 1..200 {
                let out = Command::new(&kubectl)
                    .env("HOME", &home)
                    .env("KUBECONFIG", &kubeconfig)
                    .args(["--request-timeout=5s", "create", "configmap"])
                    .arg(format!("c{i}"))
                    .arg(format!("--from-literal=i={i}"))
                    .stdin(Stdio::null())
                    .output()
                    .expect("running kubectl");
                if !out.status.success() {
                    break;
                }
                acked.push(i);
            }
            acked
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    if let Some(mut c) = s.child.take() {
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
    }
    let acked = writer.join().unwrap();
    assert!(
        acked.len() >= 3,
        "only {} writes before the kill",
        acked.len()
    );
    s.spawn();
    let names = s.ok(&["get", "cm", "-o", "name"]);
    for i in &acked {
        assert!(
            names.lines().any(|l| l == format!("configmap/c{i}")),
            "acknowledged configmap c{i} lost after SIGKILL:\n{names}"
        );
    }
    let events = s.ok(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={from}&timeoutSeconds=2"
        ),
    ]);
    let seen: Vec<(String, i64)> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "ADDED")
        .map(|e| {
            (
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                e["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0),
            )
        })
        .collect();
    assert!(
        seen.windows(2).all(|w| w[0].1 < w[1].1),
        "out of order: {seen:?}"
    );
    assert!(seen.iter().all(|(_, rv)| *rv > from), "{seen:?}");
    for i in &acked {
        assert!(
            seen.iter().any(|(n, _)| *n == format!("c{i}")),
            "the resumed watch missed c{i}: {seen:?}"
        );
    }
}

#[test]
fn sigkill_during_writes_embedded() {
    let k = need_kubectl!();
    let mut s = Server::start(k, "embedded");
    sigkill_during_writes(&mut s);
}

#[test]
fn sigkill_during_writes_etcd() {
    let k = need_kubectl!();
    let Some(etcd) = Etcd::start() else { return };
    let mut s = Server::start(k, &format!("etcd://127.0.0.1:{}", etcd.port));
    sigkill_during_writes(&mut s);
}
