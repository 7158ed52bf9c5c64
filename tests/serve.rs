//! `prenv serve` as GitHub meets it: signed deliveries over real HTTP on loopback, into a real bare
//! repository. Tampered, unsigned, replayed, oversized and garbage deliveries change nothing, and
//! clients that hold connections without a signature (idle, slowloris, a trickled body) cannot
//! shut GitHub out, even under a 256-file limit.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use hmac::{KeyInit, Mac};
use serde_json::json;

const SECRET: &str = "webhook-secret-for-tests";

struct Server {
    child: Child,
    port: u16,
    remote: PathBuf,
    _dir: tempfile::TempDir,
}

/// How a test starts the receiver: the repository it acts for, extra flags, and the open-file
/// limit (RLIMIT_NOFILE, soft and hard) it runs under.
struct Launch<'a> {
    repository: &'a str,
    args: &'a [&'a str],
    open_files: Option<u64>,
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Launch {
            repository: "acme/shop",
            args: &[],
            open_files: None,
        }
    }
}

impl Server {
    fn start() -> Server {
        Server::launch(Launch::default())
    }

    /// A receiver configured for one application repository.
    fn start_for(repository: &str) -> Server {
        Server::launch(Launch {
            repository,
            ..Launch::default()
        })
    }

    fn launch(launch: Launch) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("envs.git");
        assert!(
            Command::new("git")
                .args(["init", "--quiet", "--bare"])
                .arg(&remote)
                .status()
                .unwrap()
                .success()
        );
        let config = write_config(
            dir.path(),
            &format!(
                "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\n[github]\nrepository = \"{}\"\n",
                launch.repository
            ),
        );
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_prenv"));
        // No test reaches a registry: image checks are tests/image_wait.rs's.
        command.env("PRENV_IMAGE_CHECK", "false");
        command
            .args([
                "--config",
                s(&config),
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--repo",
                s(&remote),
            ])
            .args(["--resync-secs", "0", "--debounce-ms", "50", "--max-body-bytes", "65536"])
            .args(launch.args)
            .env("PRENV_WEBHOOK_SECRET", SECRET)
            .env("PRENV_LOG", "warn");
        if let Some(files) = launch.open_files {
            limit_open_files(&mut command, files);
        }
        let child = command.spawn().unwrap();
        let server = Server {
            child,
            port,
            remote,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.get("/healthz").0 != 200 {
            assert!(Instant::now() < deadline, "prenv serve did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn request(&self, raw: &[u8]) -> (u16, String) {
        http_request(self.port, raw)
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.request(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
    }

    fn post(&self, event: &str, delivery: &str, body: &[u8], signature: Option<&str>) -> (u16, String) {
        let mut head = format!(
            "POST /webhook HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nX-GitHub-Event: {event}\r\nX-GitHub-Delivery: {delivery}\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(sig) = signature {
            head.push_str(&format!("X-Hub-Signature-256: {sig}\r\n"));
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(body);
        self.request(&raw)
    }

    fn envs(&self) -> Vec<String> {
        env_names(&self.remote)
    }

    fn wait_for(&self, want: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.envs() != want {
            assert!(
                Instant::now() < deadline,
                "environments are {:?}, wanted {want:?}",
                self.envs()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn commits(&self) -> usize {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.remote)
            .args(["rev-list", "--count", "main"])
            .output()
            .unwrap();
        text(&out.stdout).trim().parse().unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sign(body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A `pull_request` delivery as GitHub sends it.
fn event(action: &str, pr: serde_json::Value) -> Vec<u8> {
    event_from("acme/shop", 7001, action, pr)
}

/// A delivery from a given repository: an organisation webhook or App sends every repository's.
fn event_from(repository: &str, id: u64, action: &str, mut pr: serde_json::Value) -> Vec<u8> {
    pr["base"]["repo"] = json!({"id": id, "full_name": repository});
    pr["head"]["repo"] = json!({"id": id, "full_name": repository});
    serde_json::to_vec(&json!({
        "action": action,
        "number": pr["number"],
        "pull_request": pr,
        "repository": {"id": id, "full_name": repository, "owner": {"login": repository.split('/').next()}},
        "sender": {"login": "dev"}
    }))
    .unwrap()
}

fn pr(n: u64, sha: &str) -> serde_json::Value {
    gh_pr(n, &format!("feature/{n}"), sha, &[])
}

#[test]
fn signed_events_drive_the_lifecycle_and_bad_ones_change_nothing() {
    let server = Server::start();
    let opened = event("opened", pr(1, &"a".repeat(40)));
    assert_eq!(server.post("pull_request", "d-1", &opened, Some(&sign(&opened))).0, 202);
    server.wait_for(&["shop-pr-1"]);

    // Tampered body, wrong secret, no signature: refused, nothing synced.
    let other = event("opened", pr(2, &"b".repeat(40)));
    let mut tampered = other.clone();
    let at = tampered.len() - 3;
    tampered[at] ^= 1;
    assert_eq!(
        server.post("pull_request", "d-2", &tampered, Some(&sign(&other))).0,
        401
    );
    assert_eq!(server.post("pull_request", "d-3", &other, None).0, 401);
    assert_eq!(server.post("pull_request", "d-4", &other, Some("sha256=00")).0, 401);

    // A new commit, then a replay of the first delivery: the replay must not roll it back.
    let mut pushed = pr(1, &"c".repeat(40));
    pushed["updated_at"] = json!("2026-11-24T11:00:00Z");
    let sync = event("synchronize", pushed);
    assert_eq!(server.post("pull_request", "d-5", &sync, Some(&sign(&sync))).0, 202);
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.commits() < 2 {
        assert!(Instant::now() < deadline, "the synchronize event made no commit");
        std::thread::sleep(Duration::from_millis(25));
    }
    let (status, body) = server.post("pull_request", "d-1", &opened, Some(&sign(&opened)));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("duplicate"));
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(server.commits(), 2, "a replayed delivery changed the repository");

    // Closing prunes.
    let mut closed = pr(1, &"c".repeat(40));
    closed["state"] = json!("closed");
    closed["closed_at"] = json!("2026-11-24T12:00:00Z");
    closed["updated_at"] = json!("2026-11-24T12:00:00Z");
    let close = event("closed", closed);
    assert_eq!(server.post("pull_request", "d-6", &close, Some(&sign(&close))).0, 202);
    server.wait_for(&[]);

    // Other events and pings are fine but do nothing; an oversized body is refused.
    let ping = br#"{"zen":"Keep it logically awesome."}"#;
    assert_eq!(server.post("ping", "d-7", ping, Some(&sign(ping))).0, 202);
    let big = vec![b'x'; 100_000];
    assert_eq!(server.post("pull_request", "d-8", &big, Some(&sign(&big))).0, 413);
    let metrics = server.get("/metrics").1;
    assert!(
        metrics.contains("prenv_webhook_deliveries_total{outcome=\"bad_signature\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("prenv_webhook_deliveries_total{outcome=\"duplicate\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("prenv_webhook_to_commit_seconds_count"), "{metrics}");
}

/// One of GitHub's own example payloads (octokit/webhooks, see tests/fixtures/github/README.md).
fn github_example(name: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("tests/fixtures/github").join(name)).unwrap()
}

#[test]
fn githubs_own_example_payloads_drive_the_lifecycle_of_their_repository() {
    let server = Server::start_for("Codertocat/Hello-World");
    let opened = github_example("pull_request.opened.payload.json");
    assert_eq!(
        server.post("pull_request", "ex-1", &opened, Some(&sign(&opened))).0,
        202
    );
    server.wait_for(&["shop-pr-2"]);
    let closed = github_example("pull_request.closed.payload.json");
    assert_eq!(
        server.post("pull_request", "ex-2", &closed, Some(&sign(&closed))).0,
        202
    );
    server.wait_for(&[]);
}

#[test]
fn events_of_other_repositories_are_ignored_and_change_nothing() {
    let server = Server::start();
    for n in [2, 10, 11] {
        let opened = event("opened", pr(n, &"a".repeat(40)));
        assert_eq!(
            server
                .post("pull_request", &format!("own-{n}"), &opened, Some(&sign(&opened)))
                .0,
            202
        );
    }
    server.wait_for(&["shop-pr-10", "shop-pr-11", "shop-pr-2"]);
    let commits = server.commits();

    // Other repositories of the organisation, the same PR numbers: GitHub's own example payloads
    // for Codertocat/Hello-World's PR #2, then PR #10 closed and #11 opened elsewhere.
    let mut closed = pr(10, &"b".repeat(40));
    closed["state"] = json!("closed");
    closed["closed_at"] = json!("2026-11-24T12:00:00Z");
    let foreign = [
        github_example("pull_request.closed.payload.json"),
        github_example("pull_request.opened.with-organization.payload.json"),
        event_from("Codertocat/Another-Repo", 186853003, "closed", closed.clone()),
        event_from("Codertocat/Another-Repo", 186853003, "opened", pr(11, &"c".repeat(40))),
        // The configured name but another id than the one learned: a re-created namesake.
        event_from("acme/shop", 9999, "closed", closed),
        // Another repository's PR of a shape prenv cannot read is still just another repository's.
        br#"{"action":"opened","repository":{"id":5,"full_name":"other/x"},"pull_request":{"number":"two"}}"#.to_vec(),
    ];
    for (i, body) in foreign.iter().enumerate() {
        let (status, text) = server.post("pull_request", &format!("foreign-{i}"), body, Some(&sign(body)));
        assert_eq!(status, 202, "{text}");
        assert!(text.contains("ignored: another repository"), "{i}: {text}");
    }
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(server.envs(), ["shop-pr-10", "shop-pr-11", "shop-pr-2"]);
    assert_eq!(
        server.commits(),
        commits,
        "another repository's event changed the environments"
    );
    let metrics = server.get("/metrics").1;
    assert!(
        metrics.contains("prenv_webhook_deliveries_total{outcome=\"other_repository\"} 6"),
        "{metrics}"
    );
}

#[test]
fn a_burst_of_events_is_debounced_into_few_commits() {
    let server = Server::start();
    for n in 1..=20u64 {
        let body = event("opened", pr(n, &format!("{:040x}", n)));
        assert_eq!(
            server
                .post("pull_request", &format!("burst-{n}"), &body, Some(&sign(&body)))
                .0,
            202
        );
    }
    let want: Vec<String> = {
        let mut v: Vec<String> = (1..=20).map(|n| format!("shop-pr-{n}")).collect();
        v.sort();
        v
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.envs() != want {
        assert!(Instant::now() < deadline, "{:?}", server.envs());
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(server.commits() < 20, "{} commits for 20 events", server.commits());
}

#[test]
fn garbage_never_brings_the_receiver_down() {
    let server = Server::start();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..300 {
        let len = (next() % 2048) as usize;
        let body: Vec<u8> = match i % 3 {
            0 => (0..len).map(|_| next() as u8).collect(),
            1 => format!(
                "{{\"action\":\"opened\",\"pull_request\":{{\"number\":{},\"head\":{}}}}}",
                next(),
                next() % 7
            )
            .into_bytes(),
            _ => event(
                "opened",
                json!({"number": next() % 5, "state": "open", "head": {"sha": "zz"}}),
            ),
        };
        // Signed correctly, so the parser itself is exercised.
        let (status, _) = server.post("pull_request", &format!("g-{i}"), &body, Some(&sign(&body)));
        assert!(status == 400 || status == 202, "delivery {i}: status {status}");
    }
    let raw = b"POST /webhook HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\nxx";
    let _ = server.request(raw);
    assert_eq!(server.get("/healthz").0, 200, "the receiver died");
    assert!(server.envs().is_empty());
}

#[test]
fn sigterm_stops_the_receiver_cleanly() {
    let mut server = Server::start();
    let body = event("opened", pr(3, &"d".repeat(40)));
    assert_eq!(server.post("pull_request", "t-1", &body, Some(&sign(&body))).0, 202);
    // Clients that never finish a request do not hold the shutdown past the header timeout.
    let _idle = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let mut slow = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    slow.write_all(&SLOW_HEAD[..20]).unwrap();
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "prenv serve ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(25));
    };
    assert!(status.success(), "{status:?}");
    assert_eq!(server.envs(), ["shop-pr-3"], "accepted work is finished before exit");
}

/// Runs the child under an open-file limit (soft and hard), as `ulimit -n` would.
fn limit_open_files(command: &mut Command, files: u64) {
    use std::os::unix::process::CommandExt;
    let limit = libc::rlimit {
        rlim_cur: files,
        rlim_max: files,
    };
    // SAFETY: the hook runs in the forked child before exec and only calls setrlimit, which is
    // async-signal-safe and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Lets this test process hold the attackers' hundreds of sockets: the soft limit raised to the hard one.
fn raise_own_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The start of a request head that a slowloris client never finishes.
const SLOW_HEAD: &[u8] = b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: pull_request\r\n";
/// What it sends after [`SLOW_HEAD`], one byte at a time, forever.
const SLOW_PAD: &[u8] = b"X-Pad: aaaaaaaa\r\n";

/// The next byte of a never-ending request head.
fn slow_byte(sent: usize) -> u8 {
    match SLOW_HEAD.get(sent) {
        Some(b) => *b,
        None => SLOW_PAD[(sent - SLOW_HEAD.len()) % SLOW_PAD.len()],
    }
}

/// The attack of issue 17, without a signature: `idle` clients connect and send nothing, `slow`
/// ones send a request head a byte at a time and never finish it. Whatever the server closes is
/// opened again at once, as a determined attacker would, so the connections are held for as long
/// as the siege lasts.
struct Siege {
    stop: Arc<AtomicBool>,
    /// Connections opened so far (the first ones and the reopened).
    opened: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Siege {
    fn start(port: u16, idle: usize, slow: usize) -> Siege {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, opened) = (stop.clone(), opened.clone());
            std::thread::spawn(move || {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                let mut conns: Vec<Option<(TcpStream, usize)>> = (0..idle + slow).map(|_| None).collect();
                while !stop.load(Ordering::Relaxed) {
                    for (i, slot) in conns.iter_mut().enumerate() {
                        let dead = slot
                            .as_mut()
                            .is_some_and(|(stream, sent)| !still_open(stream) || (i >= idle && !trickle(stream, sent)));
                        if dead {
                            *slot = None;
                        }
                        if slot.is_none()
                            && let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                        {
                            stream.set_nonblocking(true).unwrap();
                            opened.fetch_add(1, Ordering::Relaxed);
                            *slot = Some((stream, 0));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Siege {
            stop,
            opened,
            thread: Some(thread),
        }
    }
}

impl Drop for Siege {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// False once the server closed the connection or answered on it (an answer ends it too).
fn still_open(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    matches!(stream.read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock)
}

/// Sends the next byte of a never-ending head; false when the server closed the connection.
fn trickle(stream: &mut TcpStream, sent: &mut usize) -> bool {
    match stream.write(&[slow_byte(*sent)]) {
        Ok(1) => {
            *sent += 1;
            true
        }
        Err(e) => e.kind() == ErrorKind::WouldBlock,
        Ok(_) => false,
    }
}

/// A value of the receiver's /metrics (0 when the sample is absent).
fn metric(metrics: &str, sample: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

#[test]
fn five_hundred_unsigned_connections_under_a_256_file_limit_do_not_shut_github_out() {
    raise_own_file_limit();
    let server = Server::launch(Launch {
        open_files: Some(256),
        ..Launch::default()
    });
    let siege = Siege::start(server.port, 300, 200);
    // Generous setup: every attacker connected at least once (a receiver that stops accepting
    // leaves some in the kernel's queue and the rest unconnected: give up waiting after 30 s),
    // then a second of steady churn.
    let deadline = Instant::now() + Duration::from_secs(30);
    while siege.opened.load(Ordering::Relaxed) < 500 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        siege.opened.load(Ordering::Relaxed) >= 500,
        "only {} attackers connected",
        siege.opened.load(Ordering::Relaxed)
    );
    std::thread::sleep(Duration::from_secs(1));

    let mut want = Vec::new();
    for n in 1..=3u64 {
        let ((status, _), healthz) = timed(|| server.get("/healthz"));
        assert_eq!(status, 200, "/healthz under siege");
        let body = event("opened", pr(n, &format!("{n:040x}")));
        let ((status, text), delivery) =
            timed(|| server.post("pull_request", &format!("siege-{n}"), &body, Some(&sign(&body))));
        assert_eq!(status, 202, "a signed delivery under siege: {text}");
        eprintln!("under siege, round {n}: /healthz answered in {healthz:?}, the signed delivery in {delivery:?}");
        assert!(healthz < Duration::from_secs(1), "/healthz took {healthz:?}");
        assert!(delivery < Duration::from_secs(1), "the delivery took {delivery:?}");
        want.push(format!("shop-pr-{n}"));
    }
    // The sync behind the deliveries runs under the same siege and file limit: the connections
    // never take the files git needs.
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    server.wait_for(&want);

    let metrics = server.get("/metrics").1;
    let max = metric(&metrics, "prenv_webhook_connections_max");
    assert!(
        max > 0.0 && max <= 256.0 - 64.0,
        "the cap was not fitted to the file limit: {metrics}"
    );
    // A connection told to close to make room holds its file until its task ends: one over at most.
    assert!(
        metric(&metrics, "prenv_webhook_connections_open") <= max + 1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "prenv_webhook_connections_dropped_total{reason=\"evicted\"}") > 0.0,
        "the siege never filled the receiver: {metrics}"
    );
    // The files kept out of the cap were enough: the receiver never ran out.
    assert_eq!(metric(&metrics, "prenv_webhook_accept_errors_total"), 0.0, "{metrics}");
    eprintln!(
        "siege: {} connections opened; {}",
        siege.opened.load(Ordering::Relaxed),
        metrics
            .lines()
            .filter(|l| l.starts_with("prenv_webhook_connections"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Writes `bytes` one at a time, every 50 ms, until the server answers or closes the connection;
/// returns what it answered and when. Gives up after 15 s.
fn trickle_until_answered(stream: &mut TcpStream, mut bytes: impl Iterator<Item = u8>) -> (String, Duration) {
    let start = Instant::now();
    stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while start.elapsed() < Duration::from_secs(15) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if !answer.is_empty() {
                    break;
                }
            }
            Err(_) => break,
        }
        if let Some(byte) = bytes.next()
            && stream.write_all(&[byte]).is_err()
        {
            break;
        }
    }
    (String::from_utf8_lossy(&answer).into_owned(), start.elapsed())
}

#[test]
fn idle_slow_header_and_slow_body_clients_are_cut_off() {
    let server = Server::launch(Launch {
        args: &["--header-timeout-ms", "400", "--body-timeout-secs", "1"],
        ..Launch::default()
    });
    let connect = || TcpStream::connect(("127.0.0.1", server.port)).unwrap();

    let (answer, idle) = trickle_until_answered(&mut connect(), std::iter::empty());
    assert!(answer.is_empty(), "{answer}");
    assert!(
        (Duration::from_millis(300)..Duration::from_secs(10)).contains(&idle),
        "an idle connection was closed after {idle:?}"
    );

    let (answer, slow_head) = trickle_until_answered(&mut connect(), (0..).map(slow_byte));
    assert!(!answer.contains(" 202 "), "{answer}");
    assert!(
        (Duration::from_millis(300)..Duration::from_secs(10)).contains(&slow_head),
        "a slowloris head was cut off after {slow_head:?}"
    );

    // Complete headers, then a body announced at 60 000 bytes and sent a byte every 50 ms.
    let mut stream = connect();
    stream
        .write_all(
            b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: pull_request\r\nContent-Length: 60000\r\n\r\n",
        )
        .unwrap();
    let (answer, slow_body) = trickle_until_answered(&mut stream, std::iter::repeat(b'{'));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(10)).contains(&slow_body),
        "a trickled body was cut off after {slow_body:?}"
    );
    eprintln!("cut off: idle after {idle:?}, slow head after {slow_head:?}, slow body after {slow_body:?}");

    let metrics = server.get("/metrics").1;
    assert!(
        metric(
            &metrics,
            "prenv_webhook_connections_dropped_total{reason=\"header_timeout\"}"
        ) >= 2.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "prenv_webhook_connections_dropped_total{reason=\"body_timeout\"}"
        ) >= 1.0,
        "{metrics}"
    );
    // Prompt clients on a kept-alive connection are not affected.
    let body = event("opened", pr(4, &"e".repeat(40)));
    assert_eq!(server.post("pull_request", "fast-1", &body, Some(&sign(&body))).0, 202);
    server.wait_for(&["shop-pr-4"]);
}

/// CPU time (user and system) the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// Sets the running child's open-file limit, as `prlimit --pid` does.
fn set_open_files(pid: u32, soft: u64, hard: u64) {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: prlimit reads only the struct passed; a null old limit is allowed.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// The lowest descriptor number the process does not use: the one its next open() or accept()
/// takes, so a soft limit of exactly this leaves it no file at all.
fn lowest_free_fd(pid: u32) -> u64 {
    let used: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|fd| !used.contains(fd)).unwrap()
}

#[test]
fn running_out_of_files_pauses_accepting_and_never_ends_the_receiver() {
    let server = Server::launch(Launch {
        open_files: Some(256),
        ..Launch::default()
    });
    let pid = server.child.id();
    // No file left at all, and clients waiting in the listen queue: every accept() fails with
    // EMFILE (Too many open files) and no connection can be closed to make room.
    set_open_files(pid, lowest_free_fd(pid), 256);
    let queued: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port)).unwrap())
        .collect();
    let before = cpu_time(pid);
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_time(pid) - before;
    // A loop retrying accept() at once would burn a whole core: about 2 s here.
    assert!(
        spent < Duration::from_millis(1000),
        "the receiver spun: {spent:?} of CPU in 2 s"
    );
    drop(queued);
    set_open_files(pid, 256, 256);
    let ((status, _), recovered) = timed(|| server.get("/healthz"));
    assert_eq!(status, 200, "the receiver died when it ran out of files");
    let errors = metric(&server.get("/metrics").1, "prenv_webhook_accept_errors_total");
    // Pauses of 10 ms doubling to 1 s: about a dozen failed calls in the seconds without files
    // (more when a file the receiver closes lets one accept() through and resets the pause),
    // where a loop without a pause makes hundreds of thousands.
    let bound = 50.0 + 50.0 * window.elapsed().as_secs_f64();
    assert!(
        errors > 0.0 && errors < bound,
        "{errors} failed accept() calls, bound {bound}"
    );

    // Four spare files, far fewer than the connections it thinks it may hold: running out now
    // closes the connection that waited longest, and a prompt client is still served.
    set_open_files(pid, lowest_free_fd(pid) + 4, 256);
    let held: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let ((status, _), healthz) = timed(|| server.get("/healthz"));
    assert_eq!(status, 200, "/healthz with four spare files");
    eprintln!(
        "out of files: {spent:?} CPU in 2 s, {errors} failed accept() calls, /healthz answered {recovered:?} after the limit was raised and in {healthz:?} with 4 spare files"
    );
    drop(held);

    set_open_files(pid, 256, 256);
    let body = event("opened", pr(5, &"f".repeat(40)));
    assert_eq!(
        server.post("pull_request", "emfile-1", &body, Some(&sign(&body))).0,
        202
    );
    server.wait_for(&["shop-pr-5"]);
}
