//! Brokers for tests: started on port 0 in a fresh temp dir, stopped at the end.
//!
//! - [`TestBroker`]: the server in the test's own tokio runtime (fast; for protocol tests).
//! - [`ChildBroker`]: the `postroom` binary as a child process, for tests that restart or
//!   `kill -9` it. It waits for the binary's ready line to learn the ports.
//!
//! Layout: this file only.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use postroom_server::{Server, ServerConfig};

/// A broker running inside the test's runtime.
pub struct TestBroker {
    server: Server,
    _dir: tempfile::TempDir,
}

impl TestBroker {
    /// Starts a broker with default settings on loopback port 0.
    ///
    /// # Panics
    /// If the broker cannot start (a test failure).
    pub async fn start() -> TestBroker {
        TestBroker::start_with(|_| {}).await
    }

    /// Starts a broker after `adjust` has changed the default settings.
    ///
    /// # Panics
    /// If the broker cannot start (a test failure).
    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> TestBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = ServerConfig {
            amqp_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.path().to_path_buf(),
            ..ServerConfig::default()
        };
        adjust(&mut config);
        let server = Server::start(config).await.expect("broker starts");
        TestBroker { server, _dir: dir }
    }

    /// The AMQP address.
    pub fn addr(&self) -> SocketAddr {
        self.server.amqp_addr()
    }

    /// An `amqp://` URL for the default vhost as `guest`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr())
    }

    /// Changes the free disk space under which publishers are blocked (see
    /// [`Server::set_disk_free_limit`]).
    pub fn set_disk_free_limit(&self, bytes: u64) {
        self.server.set_disk_free_limit(bytes);
    }

    /// The HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.server.http_addr()
    }

    /// Shuts the broker down cleanly.
    pub async fn stop(self) {
        self.server.shutdown().await;
    }
}

/// The `postroom` binary running as a child process.
pub struct ChildBroker {
    binary: PathBuf,
    data_dir: PathBuf,
    child: Option<Child>,
    amqp: SocketAddr,
    http: SocketAddr,
}

/// How long a child broker may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

impl ChildBroker {
    /// Starts `binary serve` on port 0 with `data_dir`, waiting for its ready line.
    ///
    /// # Panics
    /// If it exits or is not ready in time.
    pub fn start(binary: &Path, data_dir: &Path, extra_args: &[&str]) -> ChildBroker {
        ChildBroker::start_with_env(binary, data_dir, extra_args, &[])
    }

    /// As [`ChildBroker::start`], with extra environment variables (e.g. failpoints).
    ///
    /// # Panics
    /// If it exits or is not ready in time.
    pub fn start_with_env(
        binary: &Path,
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> ChildBroker {
        let mut broker = ChildBroker {
            binary: binary.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            child: None,
            amqp: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        broker.spawn(extra_args, env);
        broker
    }

    fn spawn(&mut self, extra_args: &[&str], env: &[(&str, &str)]) {
        let mut child = Command::new(&self.binary)
            .arg("serve")
            .args(["--amqp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(extra_args)
            .env_remove("POSTROOM_FAILPOINTS")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn postroom");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("postroom ready ") {
                    let _ = tx.send(line);
                }
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        let line = loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                break line;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("postroom exited before it was ready: {status}");
            }
            assert!(Instant::now() < deadline, "postroom not ready after {READY_TIMEOUT:?}");
        };
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(name))
                .and_then(|addr| addr.parse().ok())
                .unwrap_or_else(|| panic!("bad ready line {line:?}"))
        };
        self.amqp = field("amqp=");
        self.http = field("http=");
        self.child = Some(child);
    }

    /// The AMQP address.
    pub fn addr(&self) -> SocketAddr {
        self.amqp
    }

    /// The HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// An `amqp://` URL for the default vhost as `guest`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp)
    }

    /// Kills the process with SIGKILL (no clean-up runs) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits up to 15 s for a clean exit, returning whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the binary again on the same data dir (new ports).
    pub fn restart(&mut self, extra_args: &[&str]) {
        self.kill();
        self.spawn(extra_args, &[]);
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
