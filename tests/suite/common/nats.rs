//! The tests' own `nats-server` processes (the pinned binary `scripts/test.sh` installs,
//! named by `PARKADE_TEST_NATS_SERVER`): a single node or a cluster with routes on
//! loopback, each on free ports with its own storage folder, JetStream syncing every
//! write to disk before it acknowledges (`sync_interval: always`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The server binary; a test that needs one fails without it (it never skips).
pub fn server_binary() -> PathBuf {
    let path = std::env::var("PARKADE_TEST_NATS_SERVER").unwrap_or_else(|_| {
        panic!("PARKADE_TEST_NATS_SERVER is not set: run the tests with ./scripts/test.sh, which installs nats-server")
    });
    PathBuf::from(path)
}

/// `n` distinct free ports (each held until all are found, so none is given twice).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("an address").port())
        .collect()
}

/// One server: its ports, folder and process.
pub struct Node {
    pub name: String,
    /// Client connections: `nats://127.0.0.1:{port}`.
    pub port: u16,
    /// The monitoring endpoint (`/varz`, `/jsz`, ...).
    pub monitor_port: u16,
    cluster_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn config(&self, routes: &[u16]) -> String {
        let store = self.dir.join("jetstream");
        let mut c = format!(
            "server_name: {}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\njetstream {{ store_dir: {:?}, sync_interval: always }}\n",
            self.name,
            self.port,
            self.monitor_port,
            store.display().to_string()
        );
        if !routes.is_empty() {
            let routes: Vec<String> = routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            c.push_str(&format!(
                "cluster {{ name: parkade-test, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                self.cluster_port,
                routes.join(", ")
            ));
        }
        c
    }

    /// Start (or start again, on the same ports and folder) the server.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let log = std::fs::File::create(self.dir.join("server.log")).expect("a log file");
        let child = Command::new(server_binary())
            .arg("-c")
            .arg(self.dir.join("server.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server_binary().display()));
        self.child = Some(child);
    }

    /// Kill -9: no chance to flush or say goodbye to the cluster.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the process stays, with its connections open, and answers nothing (a
    /// server stalled by its machine, a pause of its VM).
    pub fn stall(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Self::stall`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self.child.as_ref().expect("the server is running").id();
        let ok = Command::new("kill")
            .args([which, &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {which} {pid}");
    }

    /// Whether a client named `name` is connected to this server.
    pub fn has_client(&self, name: &str) -> bool {
        self.monitor("connz").is_some_and(|c| {
            c["connections"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|x| x["name"] == name))
        })
    }

    /// A monitoring page as JSON, `None` while the server does not answer.
    pub fn monitor(&self, page: &str) -> Option<Value> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.monitor_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET /{page} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        let (_, body) = reply.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A set of servers: one alone, or a cluster whose nodes route to one another.
pub struct Nats {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// Every node's client URL, comma-separated (what parkade's `nats_url` takes).
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(Node::url).collect();
        urls.join(",")
    }

    /// A single server with JetStream.
    pub fn single() -> Nats {
        Nats::start(1)
    }

    /// A cluster of `n` servers with JetStream (streams can be replicated up to `n`).
    pub fn cluster(n: usize) -> Nats {
        assert!(
            n >= 3,
            "a JetStream cluster needs three nodes for a quorum that survives one"
        );
        Nats::start(n)
    }

    fn start(n: usize) -> Nats {
        let dir = tempfile::Builder::new()
            .prefix("parkade-nats-")
            .tempdir()
            .expect("a folder");
        let ports = free_ports(3 * n);
        let mut nodes: Vec<Node> = (1..=n)
            .map(|i| {
                let node_dir = dir.path().join(format!("n{i}"));
                std::fs::create_dir_all(&node_dir).expect("a node folder");
                let p = &ports[3 * (i - 1)..3 * i];
                Node {
                    name: format!("n{i}"),
                    port: p[0],
                    monitor_port: p[1],
                    cluster_port: p[2],
                    dir: node_dir,
                    child: None,
                }
            })
            .collect();
        let routes: Vec<u16> = if n > 1 {
            nodes.iter().map(|x| x.cluster_port).collect()
        } else {
            Vec::new()
        };
        for node in &mut nodes {
            write_config(&node.dir, &node.config(&routes));
            node.start();
        }
        let nats = Nats { nodes, _dir: dir };
        nats.wait_ready(Duration::from_secs(30));
        nats
    }

    /// Wait until every running node answers and (in a cluster) JetStream has a
    /// meta leader that every running node knows.
    pub fn wait_ready(&self, within: Duration) {
        let started = std::time::Instant::now();
        loop {
            let leaders: Vec<Option<String>> = self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
                .map(|n| self.meta_leader(n))
                .collect();
            let ready =
                leaders.iter().all(|l| l.is_some()) && leaders.windows(2).all(|w| w[0] == w[1]);
            if ready {
                return;
            }
            if started.elapsed() > within {
                // The end of each node's log says why.
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        let log = n.log();
                        let lines: Vec<&str> = log.lines().collect();
                        lines[lines.len().saturating_sub(15)..].join("\n")
                    })
                    .collect();
                panic!("NATS not ready after {within:?}: leaders {leaders:?}; logs: {logs:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The JetStream meta leader as `node` sees it ("" for a single server), once the
    /// node says its JetStream is healthy.
    fn meta_leader(&self, node: &Node) -> Option<String> {
        let health = node.monitor("healthz?js-enabled-only=true")?;
        (health["status"] == "ok").then_some(())?;
        let jsz = node.monitor("jsz")?;
        if self.nodes.len() == 1 {
            return jsz.get("config").map(|_| String::new());
        }
        jsz["meta_cluster"]["leader"]
            .as_str()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
    }
}

fn write_config(dir: &Path, text: &str) {
    std::fs::write(dir.join("server.conf"), text).expect("a config file");
}
