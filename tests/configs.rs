//! Every example config in `configs/` loads and validates with its policy,
//! through the real binary's `--check`: `*agent.toml`, `*-node.toml`, and
//! the AWS examples `aws-*.toml` (their policies are `aws-*-policy.toml`).

use tourniquet_e2e::bin;

#[test]
fn every_example_config_passes_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut checked = 0;
    let mut aws_checked = 0;
    for entry in std::fs::read_dir(&dir).expect("configs/") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let aws = name.starts_with("aws-") && !name.ends_with("policy.toml");
        if !name.ends_with("agent.toml") && !name.ends_with("-node.toml") && !aws {
            continue;
        }
        let out = std::process::Command::new(bin())
            .args(["agent", "--check", "--config"])
            .arg(&path)
            .output()
            .expect("run tourniquet");
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("config ok"),
            "{name}"
        );
        checked += 1;
        aws_checked += usize::from(aws);
    }
    assert!(aws_checked >= 2, "the AWS example configs were not checked");
    assert!(
        checked >= 1,
        "no example configs found in {}",
        dir.display()
    );
}

#[test]
fn every_example_policy_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("configs/") {
        let path = entry.expect("entry").path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with("policy.toml"))
        {
            tourniquet::trust::policy::Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
    }
    assert!(checked >= 1);
}

/// `agent --check` lints what parses but cannot work: an error (a role no
/// key holds, a missing flags file) exits 1 naming each finding; a warning
/// (a rule naming no resource here) is printed and the check passes.
#[test]
fn check_lints_what_parses_but_cannot_work() {
    let env = tourniquet_e2e::Env::new();
    let check = ["agent", "--config", "agent.toml", "--check"];
    let (code, out, err) = env.cli(&check);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("config ok"), "{out}");
    assert!(!err.contains("warning["), "{err}");

    env.write_policy(&env.default_policy().replace(
        "ops = [\"flag.*\", \"revert\"]\nresources = [\"*\"]\nroles = [\"sre\"]",
        "ops = [\"flag.*\", \"revert\"]\nresources = [\"*\"]\nroles = [\"sre\", \"oncall\"]",
    ));
    std::fs::remove_file(env.path("flags.json")).expect("remove flags");
    let (code, out, err) = env.cli(&check);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("error[role_without_key]"), "{err}");
    assert!(err.contains("\"oncall\""), "{err}");
    assert!(err.contains("error[flags_file_missing]"), "{err}");
    assert!(!out.contains("config ok"), "{out}");

    let (code, out, err) = env.cli(&["agent", "--config", "agent.toml", "--check", "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(report["ok"], false, "{report}");
    let codes: Vec<&str> = report["lints"]
        .as_array()
        .expect("lints")
        .iter()
        .filter_map(|l| l["code"].as_str())
        .collect();
    assert!(codes.contains(&"role_without_key"), "{report}");
    assert!(codes.contains(&"flags_file_missing"), "{report}");

    std::fs::write(env.path("flags.json"), tourniquet_e2e::FLAGS).expect("flags");
    env.write_policy(
        &env.default_policy()
            .replace("resources = [\"locked-*\"]", "resources = [\"lokced-*\"]"),
    );
    let (code, out, err) = env.cli(&check);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("warning[rule_matches_no_resource]"), "{err}");
    assert!(
        out.contains("config ok") && out.contains("1 warning(s)"),
        "{out}"
    );
}
