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
