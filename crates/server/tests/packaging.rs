//! What `contrib/` ships: the systemd unit verifies (where `systemd-analyze` is installed)
//! and is hardened; the Containerfile's stages hang together and build what the workspace
//! has; every setting the examples name is one the binary knows.

use std::path::{Path, PathBuf};
use std::process::Command;

fn contrib(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib")
        .join(path)
}

/// `gitcache-server --help`: every flag with its environment variable.
fn help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gitcache-server"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The `GITCACHE_*` names in `text`.
fn settings(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("GITCACHE_") && w.len() > "GITCACHE_".len())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn known(help: &str, name: &str) -> bool {
    // `[env: NAME=]`, or `[env: NAME]` for secrets, whose values are not shown.
    help.contains(&format!("env: {name}=")) || help.contains(&format!("env: {name}]"))
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(contrib("systemd/gitcache.service")).unwrap();
    for line in [
        "DynamicUser=yes",
        "StateDirectory=gitcache",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
        "EnvironmentFile=-/etc/gitcache/gitcache.env",
        "ExecStart=/usr/local/bin/gitcache-server --data-dir /var/lib/gitcache",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    let help = help();
    for name in settings(&unit) {
        assert!(
            known(&help, &name),
            "the unit sets {name}, which the binary does not know"
        );
    }
    let Ok(status) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: the unit's syntax is not verified");
        return;
    };
    assert!(status.status.success());
    // Verified as installed, with the binary built for this test in ExecStart's place.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("gitcache.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/gitcache-server",
            env!("CARGO_BIN_EXE_gitcache-server"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    // Complaints about the unit name it; the machine's own (no systemd running in a
    // container, say) do not.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("gitcache.service"),
        "{stderr}"
    );
}

#[test]
fn the_environment_example_names_only_real_settings() {
    let example = std::fs::read_to_string(contrib("systemd/gitcache.env.example")).unwrap();
    let help = help();
    let names = settings(&example);
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        assert!(
            known(&help, &name),
            "the example names {name}, which the binary does not know"
        );
    }
}

#[test]
fn the_containerfile_builds_the_server_and_runs_it_unprivileged() {
    let file = std::fs::read_to_string(contrib("container/Containerfile")).unwrap();
    let lines: Vec<&str> = file
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    // Stages, and every COPY --from naming one defined before it.
    let mut stages: Vec<&str> = Vec::new();
    for line in &lines {
        if let Some(rest) = line.strip_prefix("FROM ") {
            let (_, name) = rest.split_once(" AS ").expect("every stage is named");
            stages.push(name.trim());
        }
        if let Some(rest) = line.strip_prefix("COPY --from=") {
            let stage = rest.split_whitespace().next().unwrap();
            assert!(stages.contains(&stage), "COPY from unknown stage {stage}");
        }
    }
    assert_eq!(stages, ["build", "run"]);
    // The builder is the toolchain the workspace asks for, building its server crate.
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml"))
            .unwrap();
    let rust = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert!(lines[0].contains(&format!("rust:{rust}-")), "{}", lines[0]);
    assert!(file.contains("cargo build --release --locked -p gitcache-server"));
    assert!(
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .unwrap()
            .contains("name = \"gitcache-server\"")
    );
    // After the last FROM: a user that is not root, the data volume, a health check.
    let run = &lines[lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap()..];
    let user = run
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    assert!(user != "root" && user != "0", "{user}");
    assert!(run.contains(&"VOLUME /var/lib/gitcache"));
    assert!(run.iter().any(|l| l.starts_with("HEALTHCHECK")));
    assert!(file.contains("/healthz"));
    // The health check's command is shell the image's sh reads (plain HTTP or HTTPS).
    let check = file
        .split("HEALTHCHECK")
        .nth(1)
        .and_then(|rest| rest.split_once(" CMD "))
        .map(|(_, cmd)| {
            cmd.split("\nSTOPSIGNAL")
                .next()
                .unwrap()
                .replace("\\\n", " ")
        })
        .expect("a CMD");
    assert!(
        check.contains("https://") && check.contains("http://"),
        "{check}"
    );
    let parsed = Command::new("sh")
        .args(["-n", "-c", &check])
        .status()
        .unwrap();
    assert!(parsed.success(), "{check}");
    let help = help();
    for name in settings(&file) {
        assert!(
            known(&help, &name),
            "the image sets {name}, which the binary does not know"
        );
    }
}
