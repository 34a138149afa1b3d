//! End to end with the extension: the real `nonstop lambda-extension` process registers with
//! the emulator's Extensions API (`emulator/`), the example function (`examples/greeter.rs`,
//! with `NonstopLayer`) finds it through `NONSTOP_EXTENSION_FILE`, and the real `nonstop
//! serve` gets everything through the extension: the function is given no `NONSTOP_SERVER`.
//! Each invocation's captures are at the server when the extension asks for its next event
//! (when Lambda would freeze the environment); what the server missed while it was down is
//! sent on `SHUTDOWN`, within its deadline; the answers are the function's own, byte for byte.
//! Also: `nonstop lambda package` writes the layer zip with the right entries and modes.

mod emulator;

use emulator::{RuntimeApi, side_build};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FUNCTION: &str = "greeter-fn";

fn nonstop() -> PathBuf {
    side_build().join("nonstop")
}

/// The event of invocation `k` and the log message `price` makes of it.
fn event(k: u64) -> (Vec<u8>, String) {
    let items: Vec<u32> = (0..=k % 4).map(|i| (100 * k + i) as u32).collect();
    let total: u64 = items.iter().map(|&i| u64::from(i)).sum();
    let body = serde_json::json!({"customer": format!("c{k}"), "items": items}).to_string();
    (
        body.into_bytes(),
        format!("{} items: {total} cents", items.len()),
    )
}

fn spawn_function(
    api: &RuntimeApi,
    args: &[&str],
    env: &[(&str, &str)],
) -> nonstop_testkit::ChildGuard {
    let mut cmd = Command::new(side_build().join("examples/greeter"));
    cmd.args(args)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", &api.address)
        .env("AWS_LAMBDA_FUNCTION_NAME", FUNCTION)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "7")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    nonstop_testkit::ChildGuard(cmd.spawn().unwrap())
}

fn spawn_extension(api: &RuntimeApi, server: &Server, file: &Path) -> nonstop_testkit::ChildGuard {
    let mut cmd = Command::new(nonstop());
    cmd.arg("lambda-extension")
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", &api.address)
        .env("AWS_LAMBDA_FUNCTION_NAME", FUNCTION)
        .env("NONSTOP_SERVER", &server.url)
        .env("NONSTOP_TOKEN", &server.agent)
        .env("NONSTOP_EXTENSION_FILE", file)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    nonstop_testkit::ChildGuard(cmd.spawn().unwrap())
}

struct Server {
    process: Option<nonstop_testkit::ServerProcess>,
    port: u16,
    data: PathBuf,
    url: String,
    admin: String,
    agent: String,
}

impl Server {
    fn start() -> Server {
        let data = nonstop_testkit::tempdir("lambda-ext-server");
        let port = nonstop_testkit::free_port();
        let process = nonstop_testkit::ServerProcess::start(&nonstop(), port, &data, &[]);
        Server {
            url: process.url.clone(),
            admin: process.token("admin"),
            agent: process.token("agent"),
            process: Some(process),
            port,
            data,
        }
    }

    fn stop(&mut self) {
        if let Some(p) = self.process.take() {
            p.kill();
        }
    }

    fn restart(&mut self) {
        self.stop();
        self.process = Some(nonstop_testkit::ServerProcess::start(
            &nonstop(),
            self.port,
            &self.data,
            &[],
        ));
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(nonstop())
            .args(args)
            .args(["--server", &self.url, "--token", &self.admin])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nonstop {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.cli(args)).unwrap()
    }

    /// A log rule's messages at the server, oldest first.
    fn messages(&self, rule: &str) -> Vec<String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let body = agent
            .get(format!(
                "{}/api/v1/responses?rule={rule}&limit=1000",
                self.url
            ))
            .header("Authorization", format!("Bearer {}", self.admin))
            .call()
            .unwrap_or_else(|e| panic!("GET /api/v1/responses: {e}"))
            .body_mut()
            .read_to_string()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

fn run(
    api: &RuntimeApi,
    ks: std::ops::Range<u64>,
    mut after_each: impl FnMut(u64),
) -> Vec<Vec<u8>> {
    let mut answers = Vec::new();
    for k in ks {
        let id = api.invoke(&event(k).0);
        let outcome = api.outcome(&id, Duration::from_secs(30));
        assert_eq!(
            outcome.kind,
            "response",
            "{}",
            String::from_utf8_lossy(&outcome.body)
        );
        answers.push(outcome.body);
        after_each(k);
    }
    answers
}

#[test]
fn responses_leave_through_the_extension_before_each_freeze_and_shutdown_flushes_the_rest() {
    const N: u64 = 12;
    const DOWN: u64 = 3;
    let mut server = Server::start();

    // The answers of the function without nonstop, for comparison.
    let plain_api = RuntimeApi::start();
    let plain = spawn_function(&plain_api, &["--without-nonstop"], &[]);
    let plain_answers = run(&plain_api, 0..N + DOWN, |_| {});
    plain.kill();

    let api = RuntimeApi::start();
    let file = nonstop_testkit::tempdir("lambda-ext").join("nonstop-extension");
    let mut extension = spawn_extension(&api, &server, &file);
    let registered = api.wait_for_extension(Duration::from_secs(30));
    assert_eq!(registered.name, "nonstop");
    assert_eq!(registered.events, ["INVOKE", "SHUTDOWN"]);
    // Ready: it waits for its first event (and its address is written before it registers).
    api.wait_for_extension_next_call(1, Duration::from_secs(30));
    let address = std::fs::read_to_string(&file).unwrap();
    assert!(address.starts_with("http://127.0.0.1:"), "{address}");

    let file_env = file.to_str().unwrap();
    let function = spawn_function(&api, &[], &[("NONSTOP_EXTENSION_FILE", file_env)]);
    let agent = nonstop_testkit::wait_for("the function's agent", Duration::from_secs(30), || {
        let agents = server.json(&["agents", "--json"]);
        agents.as_array().and_then(|a| a.first().cloned())
    });
    assert_eq!(agent["service"], FUNCTION);
    assert_eq!(agent["version"], "7");

    let at = format!(
        "greeter.rs:{}",
        nonstop_testkit::marks(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/greeter.rs"))
            ["priced"]
    );
    let log = server
        .cli(&[
            "rules",
            "add",
            &at,
            "--service",
            FUNCTION,
            "--log",
            "{count} items: {total} cents",
            "--rate",
            "1000/s",
        ])
        .trim()
        .to_owned();
    nonstop_testkit::wait_for("the log rule armed", Duration::from_secs(30), || {
        let view = server.json(&["rules", "show", &log, "--json"]);
        match view["agents"][0]["status"].as_str() {
            Some("armed") => Some(()),
            Some("error") => panic!("rule {log} failed: {:#}", view["agents"]),
            _ => None,
        }
    });

    // Every invocation's message is at the server once the extension asks for its next
    // event, i.e. before Lambda would freeze the environment.
    let mut answers = run(&api, 0..N, |k| {
        api.wait_for_extension_next_call(k + 2, Duration::from_secs(30));
        let want: Vec<String> = (0..=k).map(|j| event(j).1).collect();
        assert_eq!(server.messages(&log), want, "after invocation {k}");
    });

    // The server goes away: the function answers as before, the extension keeps the messages.
    server.stop();
    answers.extend(run(&api, N..N + DOWN, |k| {
        api.wait_for_extension_next_call(k + 2, Duration::from_secs(30));
    }));
    assert_eq!(answers, plain_answers, "the answers changed under nonstop");
    assert_eq!(
        String::from_utf8_lossy(&answers[3]),
        r#"{"message":"thanks c3, that is 1206 cents","total":1206}"#
    );

    // Back while the environment is idle (frozen, on Lambda): nothing is sent until the
    // shutdown, which sends it all within its deadline and ends the extension.
    server.restart();
    assert_eq!(server.messages(&log).len() as u64, N);
    let deadline = api.shutdown("spindown", Duration::from_millis(2000));
    let status = nonstop_testkit::wait_for("the extension's exit", Duration::from_secs(10), || {
        extension.0.try_wait().unwrap()
    });
    let exited = Instant::now();
    assert!(status.success(), "the extension exited with {status}");
    assert!(
        exited <= deadline,
        "the extension outlived its shutdown deadline"
    );
    let want: Vec<String> = (0..N + DOWN).map(|k| event(k).1).collect();
    assert_eq!(server.messages(&log), want, "after the shutdown");
    assert!(!file.exists(), "the extension leaves no address behind");
    drop(function);
}

#[test]
fn without_the_layer_the_extension_does_not_hold_invocations_until_their_deadline() {
    // A function that never tells the extension an invocation is done (no layer; or an agent
    // under LD_PRELOAD speaking to the server itself): the extension must not wait for the
    // notice until the invocation's deadline (30 s in the emulator) before its next event.
    let server = Server::start();
    let api = RuntimeApi::start();
    let file = nonstop_testkit::tempdir("lambda-ext-nolayer").join("nonstop-extension");
    let _extension = spawn_extension(&api, &server, &file);
    api.wait_for_extension_next_call(1, Duration::from_secs(30));
    let function = spawn_function(&api, &["--without-nonstop"], &[]);
    let answers = run(&api, 0..3, |k| {
        api.wait_for_extension_next_call(k + 2, Duration::from_secs(10));
    });
    assert_eq!(
        String::from_utf8_lossy(&answers[2]),
        r#"{"message":"thanks c2, that is 603 cents","total":603}"#
    );
    drop(function);
}

#[test]
fn lambda_package_writes_the_extension_and_the_agent_library_with_their_modes() {
    let out = nonstop_testkit::tempdir("lambda-package").join("layer.zip");
    let lib = nonstop_testkit::agent_library();
    let status = Command::new(nonstop())
        .args(["lambda", "package", "--out"])
        .arg(&out)
        .env("NONSTOP_AGENT_LIB", &lib)
        .status()
        .unwrap();
    assert!(status.success());
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
    let mut entries = Vec::new();
    for i in 0..zip.len() {
        let e = zip.by_index(i).unwrap();
        entries.push((
            e.name().to_owned(),
            e.unix_mode().map(|m| m & 0o777),
            e.size(),
        ));
    }
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert_eq!(
        entries,
        vec![
            ("extensions/".to_owned(), Some(0o755), 0),
            ("lib/".to_owned(), Some(0o755), 0),
            (
                "extensions/nonstop".to_owned(),
                Some(0o755),
                size(&nonstop())
            ),
            (
                "lib/libnonstop_agent.so".to_owned(),
                Some(0o755),
                size(&lib)
            ),
        ]
    );
    // What is packed is the binary itself, byte for byte.
    let mut packed = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_name("extensions/nonstop").unwrap(), &mut packed)
        .unwrap();
    assert!(packed == std::fs::read(nonstop()).unwrap());

    // Unpacked as Lambda does into /opt, the extension starts without arguments and registers.
    let opt = nonstop_testkit::tempdir("lambda-opt");
    zip.extract(&opt).unwrap();
    let api = RuntimeApi::start();
    let extension = Command::new(opt.join("extensions/nonstop"))
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", &api.address)
        .env("NONSTOP_SERVER", "http://127.0.0.1:9")
        .env("NONSTOP_EXTENSION_FILE", opt.join("nonstop-extension"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let extension = nonstop_testkit::ChildGuard(extension);
    assert_eq!(
        api.wait_for_extension(Duration::from_secs(30)).name,
        "nonstop"
    );
    extension.kill();
}
