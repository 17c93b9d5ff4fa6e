//! The op verbs, typed `new --param`, `tourniquet ops` and readable
//! changes, through the real binary: what a security engineer types to
//! block an address must compose the JSON the provider takes, and what
//! `status` prints must say what changed in words.

use std::net::Ipv4Addr;

use serde_json::Value;
use tourniquet::command::envelope::Envelope;
use tourniquet_e2e::edge::*;
use tourniquet_e2e::*;

/// The payload inside a signed envelope file, or a bare payload file.
fn payload_of(env: &Env, file: &str) -> Value {
    let bytes = std::fs::read(env.path(file)).expect("written file");
    let bytes = match Envelope::from_json(&bytes) {
        Ok(e) => e.payload_bytes().expect("payload"),
        Err(_) => bytes,
    };
    serde_json::from_slice(&bytes).expect("payload JSON")
}

fn run_ok(env: &Env, args: &[&str]) -> String {
    let (code, out, err) = env.cli(args);
    assert_eq!(code, 0, "tourniquet {args:?}:\n{out}{err}");
    out
}

#[test]
fn verbs_and_typed_new_compose_what_the_providers_take() {
    let env = Env::new();
    let signed = ["--reason", "INC-7: stuffing", "--key", "alice_ed25519"];

    let mut args = vec!["waf", "block", "edge-waf", "203.0.113.7/32", "198.51.100.9"];
    args.extend(signed);
    args.extend(["-o", "waf.json"]);
    run_ok(&env, &args);
    let p = payload_of(&env, "waf.json");
    assert_eq!(p["actions"][0]["resource"], "edge-waf", "{p}");
    assert_eq!(p["actions"][0]["op"], "waf.block", "{p}");
    assert_eq!(
        p["actions"][0]["cidrs"],
        serde_json::json!(["203.0.113.7/32", "198.51.100.9"]),
        "{p}"
    );

    let mut args = vec![
        "nginx",
        "brownout",
        "edge",
        "/search",
        "--status",
        "429",
        "--retry-after",
        "2m",
    ];
    args.extend(signed);
    args.extend(["-o", "brownout.json"]);
    run_ok(&env, &args);
    let a = &payload_of(&env, "brownout.json")["actions"][0];
    assert_eq!(a["paths"], serde_json::json!(["/search"]), "{a}");
    assert_eq!(a["status"], 429, "{a}");
    assert_eq!(a["retry_after"], 120, "{a}");

    run_ok(
        &env,
        &[
            "new",
            "waf.block",
            "--resource",
            "edge-waf",
            "--param",
            "cidrs=203.0.113.7/32",
            "--reason",
            "INC-7",
            "-o",
            "new.json",
        ],
    );
    let a = &payload_of(&env, "new.json")["actions"][0];
    assert_eq!(a["cidrs"], serde_json::json!(["203.0.113.7/32"]), "{a}");

    // A wrong type names the expected type and an example; exit 64.
    let (code, out, err) = env.cli(&[
        "new",
        "nginx.brownout",
        "--resource",
        "edge",
        "--param",
        "paths=/search",
        "--param",
        "status=abc",
        "--reason",
        "r",
    ]);
    assert_eq!(code, 64, "{out}{err}");
    assert!(
        err.contains("status: \"abc\" is not a whole number from 400 to 599; expected an integer such as 503"),
        "{err}"
    );
    let mut args = vec!["waf", "block", "edge-waf", "abc"];
    args.extend(signed);
    let (code, out, err) = env.cli(&args);
    assert_eq!(code, 64, "{out}{err}");
    assert!(
        err.contains(
            "cidrs: \"abc\" is not a CIDR; expected an IPv4 or IPv6 network such as 203.0.113.7/32"
        ),
        "{err}"
    );
}

#[test]
fn ops_lists_cdn_purge_once_with_its_four_kinds() {
    let env = Env::new();
    let out = run_ok(&env, &["ops", "--json"]);
    let ops: Vec<Value> = serde_json::from_str(&out).expect("ops JSON");
    let purge: Vec<&Value> = ops.iter().filter(|o| o["op"] == "cdn.purge").collect();
    assert_eq!(purge.len(), 1, "{out}");
    assert_eq!(
        purge[0]["kinds"],
        serde_json::json!(["varnish", "fastly", "cloudflare", "aws-cloudfront"]),
        "{out}"
    );
    for o in &ops {
        for p in o["params"].as_array().expect("params") {
            assert!(p["doc"].as_str().is_some_and(|d| !d.is_empty()), "{o}");
            assert!(p["example"].as_str().is_some_and(|d| !d.is_empty()), "{o}");
        }
    }
}

#[test]
fn nginx_deny_applies_and_status_reads_the_change_in_words() {
    let env = Env::new();
    let nginx = NginxServer::start(&env.path("nginx"));
    let policy = env.default_policy().replace(
        "ops = [\"flag.*\", \"revert\"]",
        "ops = [\"flag.*\", \"nginx.*\", \"revert\"]",
    );
    env.write_policy(&policy);
    env.write_config(&(env.default_config() + &nginx.resource_config("edge-nginx")));
    let agent = env.start();

    let out = run_ok(
        &env,
        &[
            "nginx",
            "deny",
            "edge-nginx",
            "127.0.0.2",
            "--reason",
            "INC-7: stuffing",
            "--key",
            "alice_ed25519",
            "--send",
            &agent.url,
            "--json",
        ],
    );
    let rec: Value = serde_json::from_str(&out).expect("JSON answer");
    assert_eq!(rec["state"], "kept", "{rec}");
    let id = rec["id"].as_str().expect("id");
    let denied = get_from(Ipv4Addr::new(127, 0, 0, 2), &nginx.url("/")).map(|a| a.status);
    assert_eq!(denied, Some(403));

    let text = run_ok(&env, &["status", id, "--agent", &agent.url]);
    assert!(
        text.contains("edge-nginx nginx.deny: +127.0.0.2/32 (answered 403)"),
        "{text}"
    );
    // The JSON keeps the states and adds the line.
    let json: Value = serde_json::from_str(&run_ok(
        &env,
        &["status", id, "--agent", &agent.url, "--json"],
    ))
    .expect("status JSON");
    let action = &json["actions"][0];
    assert_eq!(action["before"]["present"], false, "{json}");
    assert_eq!(action["after"]["present"], true, "{json}");
    assert_eq!(
        action["change"], "edge-nginx nginx.deny: +127.0.0.2/32 (answered 403)",
        "{json}"
    );
}
