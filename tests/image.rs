//! What the container image runs, read from the Dockerfile's runtime stage
//! (no container engine here; `.ci/image-build` proves the build stage):
//! a non-root user that owns its home, environment defaults the binary
//! accepts, and a health check and command the binary understands.
use std::collections::BTreeMap;
use std::process::Command;

/// The Dockerfile's last stage as (instruction, argument), continuation lines joined.
fn runtime_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .expect("Dockerfile");
    let mut steps = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        if pending.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with('#')) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        let full = std::mem::take(&mut pending) + line;
        let (keyword, arg) = full.trim().split_once(' ').unwrap_or((full.trim(), ""));
        steps.push((keyword.to_uppercase(), arg.trim().to_string()));
    }
    let last_from = steps
        .iter()
        .rposition(|(k, _)| k == "FROM")
        .expect("a FROM");
    steps.split_off(last_from)
}

fn one(stage: &[(String, String)], keyword: &str) -> String {
    let found: Vec<_> = stage.iter().filter(|(k, _)| k == keyword).collect();
    assert_eq!(found.len(), 1, "one {keyword} in the runtime stage");
    found[0].1.clone()
}

/// `KEY=value KEY2=value2` (ENV's form with `=`).
fn env_of(stage: &[(String, String)]) -> BTreeMap<String, String> {
    stage
        .iter()
        .filter(|(k, _)| k == "ENV")
        .flat_map(|(_, arg)| {
            arg.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("ENV KEY=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// An exec-form (JSON array) argument.
fn exec_form(arg: &str) -> Vec<String> {
    serde_json::from_str(arg).unwrap_or_else(|e| panic!("{arg} is not exec form: {e}"))
}

#[test]
fn the_image_runs_as_a_user_of_its_own_that_owns_the_storage_directory() {
    let stage = runtime_stage();
    let user = one(&stage, "USER");
    assert!(
        !["root", "0"].contains(&user.as_str()) && !user.starts_with("0:"),
        "the image runs as {user}"
    );
    let useradd = stage
        .iter()
        .find(|(k, arg)| k == "RUN" && arg.contains("useradd"))
        .map(|(_, arg)| arg.clone())
        .expect("the runtime stage creates its user");
    let words: Vec<&str> = useradd.split_whitespace().collect();
    let after = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1))
            .copied()
    };
    // useradd [options] NAME: the name is the last word of its command.
    let command = useradd.split("useradd").nth(1).expect("useradd");
    let command = command.split("&&").next().unwrap_or_default();
    let name = command.split_whitespace().last().expect("a user name");
    assert_eq!(name, user, "USER is the user useradd creates");
    assert!(
        words.contains(&"--create-home"),
        "{useradd}: the home is created"
    );
    let home = after("--home-dir").expect("useradd --home-dir");

    let env = env_of(&stage);
    let storage = env
        .get("REACTOR_STORAGE_URL")
        .expect("REACTOR_STORAGE_URL set");
    let dir = reactor::providers::storage::local_dir(storage)
        .unwrap_or_else(|| panic!("{storage} is not a local directory"));
    assert!(
        dir.is_absolute() && dir.starts_with(home),
        "storage {} must lie in {home}, the only place the user may create it",
        dir.display()
    );
    assert_eq!(
        one(&stage, "WORKDIR"),
        home,
        "the image works in its user's home"
    );
}

#[test]
fn the_image_environment_and_commands_are_what_the_binary_accepts() {
    let stage = runtime_stage();
    let env = env_of(&stage);
    let http: std::net::SocketAddr = env["REACTOR_HTTP_ADDR"].parse().expect("an address");
    assert_eq!(
        one(&stage, "EXPOSE"),
        http.port().to_string(),
        "the exposed port is the one the server listens on"
    );
    let entry = exec_form(&one(&stage, "ENTRYPOINT"));
    assert_eq!(entry, ["reactor"]);
    let copy = one(&stage, "COPY");
    assert!(
        copy.ends_with("/usr/local/bin/reactor"),
        "{copy}: the binary is on PATH as reactor"
    );

    // Every setting the image sets is one `reactor run` reads: a typo would
    // be ignored silently, so compare with the names in `run --help`.
    let help = Command::new(env!("CARGO_BIN_EXE_reactor"))
        .args(exec_form(&one(&stage, "CMD")))
        .arg("--help")
        .output()
        .expect("reactor");
    assert!(
        help.status.success(),
        "the image's command with --help: {help:?}"
    );
    let help = String::from_utf8_lossy(&help.stdout);
    for key in env.keys() {
        assert!(
            help.contains(&format!("env: {key}=")),
            "{key} is not a setting of `reactor run`"
        );
    }
    let run = Command::new(env!("CARGO_BIN_EXE_reactor"))
        .args(exec_form(&one(&stage, "CMD")))
        .envs(&env)
        .env_remove("DATABASE_URL")
        .output()
        .expect("reactor");
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("DATABASE_URL") && !err.contains("invalid value"),
        "without a database the image's command names DATABASE_URL and accepts the rest: {err}"
    );

    // The health check's command line parses: with nothing listening it
    // fails as a health check does (exit 1, naming the URL), not as a usage
    // error (exit 2).
    let health = one(&stage, "HEALTHCHECK");
    let cmd = health
        .split_once("CMD ")
        .expect("HEALTHCHECK … CMD [...]")
        .1;
    let argv = exec_form(cmd);
    assert_eq!(argv[0], "reactor");
    let check = Command::new(env!("CARGO_BIN_EXE_reactor"))
        .args(&argv[1..])
        .envs(&env)
        .output()
        .expect("reactor healthcheck");
    let err = String::from_utf8_lossy(&check.stderr);
    assert_ne!(check.status.code(), Some(2), "a usage error: {err}");
    assert!(
        check.status.success()
            || err.contains(&format!("http://127.0.0.1:{}/healthz", http.port())),
        "the check asks the server the image runs: {err}"
    );
}
