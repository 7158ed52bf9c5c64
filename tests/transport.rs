//! The binary's git transports, against real peers on this machine: a closed port for HTTPS and
//! SSH (the transports exist and errors name the redacted URL), a real OpenSSH `sshd` with a
//! generated host key and a bare repository (a push lands; an unknown or changed host key is
//! refused), and `openssl s_server` with a self-signed certificate (the TLS check refuses it).

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::*;

const CONFIG: &str = "project_id = \"shop\"\ndomain = \"p.example.com\"\nimage = \"ghcr.io/acme/shop\"\ndatabases = [\"postgres\"]\nengine = \"flux\"\n[github]\nrepository = \"acme/shop\"\n";
/// A token that must never appear in any output (long enough for prenv's redaction of env tokens).
const TOKEN: &str = "ghs_transporttesttoken0123456789";
/// How many times to look for a freshly started server's port before giving up (50 ms apart: a
/// readiness wait, not a timed assertion).
const READY_TRIES: u32 = 200;

/// A port nothing listens on: bound by the OS, then released.
fn closed_port() -> u16 {
    free_port()
}

fn wait_for_port(port: u16, server: &mut Child) {
    for _ in 0..READY_TRIES {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Some(status) = server.try_wait().unwrap() {
            panic!("the server on port {port} exited before listening: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("nothing listens on port {port}");
}

/// A server process, killed when the test ends (also on a failed assertion).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
    prs: PathBuf,
    home: PathBuf,
}

impl Env {
    fn new(config_extra: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &format!("{CONFIG}{config_extra}"));
        let prs = write_prs(dir.path(), &[gh_pr(7, "feature/a", &"a".repeat(40), &[])]);
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        Env { dir, config, prs, home }
    }

    /// Runs the real binary with `HOME` (where libgit2 reads `.ssh/known_hosts`) and the cache in
    /// the temp dir, and a token in the environment that no output may show.
    fn run(&self, cmd: &str, repo: &str) -> Output {
        Command::new(env!("CARGO_BIN_EXE_prenv"))
            .args([
                "--config",
                s(&self.config),
                cmd,
                "--prs",
                s(&self.prs),
                "--repo",
                repo,
                "--now",
                NOW,
            ])
            .env_remove("PRENV_CONFIG")
            .env_remove("GITHUB_TOKEN")
            .env_remove("SSH_AUTH_SOCK")
            .env("PRENV_LOG", "warn")
            .env("PRENV_GIT_TOKEN", TOKEN)
            .env("HOME", &self.home)
            .env("XDG_CACHE_HOME", self.dir.path().join("cache"))
            .env("XDG_DATA_HOME", self.dir.path().join("data"))
            .output()
            .expect("running the prenv binary")
    }
}

/// The run failed, said nothing of a missing transport, named `shown` and never the token.
fn failed_naming(out: &Output, shown: &str) -> String {
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "expected a failure: {all}");
    assert!(!all.contains(TOKEN), "the token leaked: {all}");
    assert!(!all.contains("sekrit-in-url"), "the URL's password leaked: {all}");
    assert!(!all.contains("no TLS stream"), "HTTPS is missing from libgit2: {all}");
    assert!(
        !all.contains("unsupported URL protocol"),
        "SSH is missing from libgit2: {all}"
    );
    assert!(all.contains(shown), "the error does not name {shown}: {all}");
    all
}

#[test]
fn https_reaches_the_network_and_names_the_redacted_url() {
    let env = Env::new("");
    let port = closed_port();
    let out = env.run(
        "plan",
        &format!("https://x-access-token:sekrit-in-url@127.0.0.1:{port}/x.git"),
    );
    let all = failed_naming(&out, &format!("https://***@127.0.0.1:{port}/x.git"));
    assert!(all.contains("failed to connect"), "{all}");
}

#[test]
fn ssh_reaches_the_network_and_names_the_redacted_url() {
    let env = Env::new("");
    let port = closed_port();
    let out = env.run("plan", &format!("ssh://git@127.0.0.1:{port}/x.git"));
    let all = failed_naming(&out, &format!("ssh://***@127.0.0.1:{port}/x.git"));
    assert!(all.contains("failed to connect"), "{all}");
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn keygen(path: &Path) -> String {
    run_ok(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "prenv-test", "-f", s(path)]));
    std::fs::read_to_string(path.with_extension("pub")).unwrap()
}

/// `$PRENV_SSHD` (scripts/tools.sh sets it), else Debian's path.
fn sshd_path() -> String {
    std::env::var("PRENV_SSHD").unwrap_or_else(|_| "/usr/sbin/sshd".into())
}

/// A real sshd on a free port, as the current user, accepting only `client_pub`, with its own
/// host key; returns the server and the host key's public line.
fn start_sshd(dir: &Path, client_pub: &str) -> (Server, u16, String) {
    let host_key = dir.join("host_key");
    let host_pub = keygen(&host_key);
    let authorized = dir.join("authorized_keys");
    std::fs::write(&authorized, client_pub).unwrap();
    let port = closed_port();
    let config = dir.join("sshd_config");
    // Only what a test server needs: no PAM (needs root), no privilege-dropping checks on temp
    // dir modes (StrictModes), key authentication only.
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
             StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\nPermitRootLogin prohibit-password\n",
            s(&host_key),
            s(&authorized),
            s(&dir.join("sshd.pid")),
        ),
    )
    .unwrap();
    // sshd re-executes itself, so it must be started by its absolute path; -D: no daemon, -e: log to stderr.
    let child = Command::new(sshd_path())
        .args(["-D", "-e", "-f", s(&config)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
        .spawn()
        .expect("starting sshd (Debian package openssh-server; scripts/tools.sh installs it)");
    let mut server = Server(child);
    wait_for_port(port, &mut server.0);
    (server, port, host_pub)
}

fn user() -> String {
    text(&run_ok(Command::new("id").arg("-un")).stdout).trim().to_string()
}

fn tip(repo: &Path) -> Option<String> {
    let out = Command::new("git")
        .args([
            "--git-dir",
            s(repo),
            "rev-parse",
            "--verify",
            "--quiet",
            "refs/heads/main",
        ])
        .output()
        .unwrap();
    out.status.success().then(|| text(&out.stdout).trim().to_string())
}

#[test]
fn ssh_push_with_a_deploy_key_lands_and_unknown_host_keys_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let client_key = work.path().join("id_ed25519");
    let client_pub = keygen(&client_key);
    let env = Env::new(&format!("[git]\nssh_key = \"{}\"\n", s(&client_key)));
    let (_server, port, host_pub) = start_sshd(work.path(), &client_pub);
    let remote = work.path().join("envs.git");
    run_ok(Command::new("git").args(["init", "--quiet", "--bare", "--initial-branch=main", s(&remote)]));
    let url = format!("ssh://{}@127.0.0.1:{port}{}", user(), s(&remote));
    let shown = format!("ssh://***@127.0.0.1:{port}{}", s(&remote));
    let known_hosts = env.home.join(".ssh/known_hosts");

    // No known_hosts at all: refused before any credential is offered, and the error says where
    // the key belongs.
    let out = env.run("sync", &url);
    let all = failed_naming(&out, &shown);
    assert!(all.contains("unknown remote ssh hostkey"), "{all}");
    assert!(all.contains("known_hosts"), "{all}");
    assert_eq!(tip(&remote), None);

    // known_hosts names the host with another key (a changed or spoofed host): refused too.
    let other = keygen(&work.path().join("other_host_key"));
    let key_of = |line: &str| line.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {}\n", key_of(&other))).unwrap();
    let all = failed_naming(&env.run("sync", &url), &shown);
    assert!(all.contains("unknown remote ssh hostkey"), "{all}");
    assert_eq!(tip(&remote), None);

    // The host's real key, in the form `ssh-keyscan -p PORT 127.0.0.1` prints: the push lands.
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {}\n", key_of(&host_pub))).unwrap();
    let out = env.run("sync", &url);
    assert!(
        out.status.success(),
        "sync over SSH failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let pushed = tip(&remote).expect("the push left no commit on main");
    let files = text(
        &run_ok(Command::new("git").args(["--git-dir", s(&remote), "ls-tree", "-r", "--name-only", &pushed])).stdout,
    );
    assert!(files.lines().any(|f| f.starts_with("environments/")), "{files}");

    // A second run fetches over SSH, finds nothing to do and writes no commit.
    let out = env.run("sync", &url);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(tip(&remote).as_deref(), Some(pushed.as_str()));
}

#[test]
fn https_refuses_a_certificate_no_system_root_signs() {
    let work = tempfile::tempdir().unwrap();
    let (cert, key) = (work.path().join("cert.pem"), work.path().join("key.pem"));
    run_ok(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
        s(&key),
        "-out",
        s(&cert),
    ]));
    let port = closed_port();
    let child = Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-accept",
            &port.to_string(),
            "-cert",
            s(&cert),
            "-key",
            s(&key),
            "-www",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting openssl s_server");
    let mut server = Server(child);
    wait_for_port(port, &mut server.0);
    let env = Env::new("");
    let shown = format!("https://127.0.0.1:{port}/x.git");
    let all = failed_naming(&env.run("plan", &shown), &shown);
    assert!(all.contains("certificate"), "{all}");
    assert!(all.contains("SSL_CERT_FILE"), "{all}");
}

/// A smart-HTTP server that wants credentials: every request gets `401` with a Basic challenge,
/// as GitHub answers `GET /info/refs?service=git-upload-pack` for a private repository without
/// them. libgit2 (1.9 `transports/httpclient.c` parses `WWW-Authenticate`; `transports/http.c`,
/// `handle_auth`) then asks the credentials callback for USERPASS_PLAINTEXT and replays the request.
/// Returns the port and every `Authorization` header received.
fn start_401_server() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some(value) = line
                    .strip_prefix("Authorization: ")
                    .or_else(|| line.strip_prefix("authorization: "))
                {
                    record.lock().unwrap().push(value.trim().to_string());
                }
                line.clear();
            }
            let _ = stream.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"GitHub\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (port, seen)
}

#[test]
fn http_asks_for_the_token_as_x_access_token_and_never_shows_it() {
    use base64::Engine;
    let (port, seen) = start_401_server();
    let env = Env::new("");
    let shown = format!("http://127.0.0.1:{port}/acme/envs.git");
    let all = failed_naming(&env.run("plan", &shown), &shown);
    assert!(all.contains("refused the credentials"), "{all}");
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"))
    );
    let seen = seen.lock().unwrap();
    assert!(
        seen.contains(&want),
        "the token was not offered as x-access-token: {seen:?}"
    );
}
