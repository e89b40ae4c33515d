//! Real servers for tests: each test starts its own Redis (and ClickHouse)
//! process on a free loopback port, so it can stop, restart or wipe it.
//!
//! The test command (`scripts/test-all.sh`) installs the Debian packages.
//! With `CI=true` a missing server binary fails the test; elsewhere the
//! test says so and returns.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `binary` is installed; with `CI=true` a missing one fails.
pub fn available(binary: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {binary}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{binary} is not installed: run the tests with scripts/test-all.sh, which installs it"
        );
        eprintln!("{binary} is not installed; skipping (scripts/test-all.sh installs it)");
    }
    found
}

/// The whole HTTP/1.0 answer (status line, headers, body) of `GET path`
/// at `address`, or `None` if nothing answers there.
pub fn http_get(address: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Kills a server process (SIGKILL) and reaps it.
fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A `redis-server` of this test's own.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    append_only: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server; `append_only` keeps its data across restarts
    /// (`appendfsync always`), otherwise nothing is persisted.
    pub fn start(append_only: bool) -> RedisServer {
        let mut server = RedisServer { port: free_port(), dir: tempfile::tempdir().unwrap(), append_only, child: None };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.append_only {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        self.child = Some(command.spawn().expect("redis-server starts"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.connection().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer", self.port);
    }

    /// A connection, if the server answers.
    pub fn connection(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut connection = client.get_connection_with_timeout(Duration::from_millis(500)).ok()?;
        redis::cmd("PING").query::<String>(&mut connection).ok()?;
        Some(connection)
    }

    /// Stops the server (SIGKILL: what a crash or an OOM kill does).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `projector` binary of this build (`target/<profile>/projector`,
/// next to the test binaries' `deps/` folder).
pub fn projector_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let binary = exe.parent().and_then(Path::parent).expect("target/<profile>").join("projector");
    assert!(binary.is_file(), "{} is missing: build it first (cargo build -p projector)", binary.display());
    binary
}

/// A `clickhouse-server` of this test's own, in a scratch directory.
pub struct ClickHouseServer {
    pub http_port: u16,
    tcp_port: u16,
    interserver_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl ClickHouseServer {
    /// Starts a server and waits until it answers (a few seconds).
    pub fn start() -> ClickHouseServer {
        let mut server = ClickHouseServer {
            http_port: free_port(),
            tcp_port: free_port(),
            interserver_port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) {
        let dir = self.dir.path();
        for sub in ["data", "tmp", "uf", "fs"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let arg = |name: &str, value: &Path| format!("--{name}={}/", value.display());
        let child = Command::new("clickhouse-server")
            .arg("--config-file=/etc/clickhouse-server/config.xml")
            .arg("--")
            .arg(arg("path", &dir.join("data")))
            .arg(arg("tmp_path", &dir.join("tmp")))
            .arg(arg("user_files_path", &dir.join("uf")))
            .arg(arg("format_schema_path", &dir.join("fs")))
            .arg(format!("--logger.log={}", dir.join("log.txt").display()))
            .arg(format!("--logger.errorlog={}", dir.join("err.txt").display()))
            .arg(format!("--http_port={}", self.http_port))
            .arg(format!("--tcp_port={}", self.tcp_port))
            .arg(format!("--interserver_http_port={}", self.interserver_port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("clickhouse-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.query("SELECT 1").is_ok_and(|answer| answer.trim() == "1") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("clickhouse-server on port {} did not answer; see {}", self.http_port, dir.join("err.txt").display());
    }

    /// Runs `sql` over HTTP and answers the body (TabSeparated unless the
    /// query says otherwise).
    pub fn query(&self, sql: &str) -> Result<String, String> {
        clickhouse_query(self.http_port, sql)
    }

    /// Stops the server (SIGKILL).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `sql` over HTTP on the ClickHouse server at `http_port` and answers
/// the body (TabSeparated unless the query says otherwise).
pub fn clickhouse_query(http_port: u16, sql: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", http_port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let request = format!(
        "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{sql}",
        sql.len()
    );
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
        Ok(body.to_string())
    } else {
        Err(format!("{}: {body}", head.lines().next().unwrap_or_default()))
    }
}
