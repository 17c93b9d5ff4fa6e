//! Edge providers end to end, against real servers: the real `tourniquet`
//! binary changes a real nginx (deny lists, brownouts, a config that fails
//! `nginx -t`) and purges a real Varnish, each started per test on
//! ephemeral loopback ports from configs under the test's temp dir.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{json, Value};
use tourniquet_e2e::edge::*;
use tourniquet_e2e::*;

const OTHER_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// alice is `security` and `sre`, bob only `sre`: security may push
/// `nginx.deny` and `cdn.purge`, sre may brown out; either may revert.
fn edge_policy(env: &Env) -> String {
    format!(
        r#"version = 1
max_ttl = "30m"
clock_skew = "2m"

[keys.alice]
public_key = "{}"
roles = ["security", "sre"]

[keys.bob]
public_key = "{}"
roles = ["sre"]

[[rules]]
ops = ["nginx.deny", "cdn.purge"]
resources = ["*"]
roles = ["security"]
threshold = 1

[[rules]]
ops = ["nginx.brownout", "revert"]
resources = ["*"]
roles = ["sre"]
threshold = 1
"#,
        env.key("alice").public,
        env.key("bob").public
    )
}

/// A test dir whose agent manages `edge-nginx`, a real nginx of its own.
fn nginx_env() -> (Env, NginxServer) {
    let env = Env::new();
    let nginx = NginxServer::start(&env.path("nginx"));
    env.write_policy(&edge_policy(&env));
    env.write_config(&(env.default_config() + &nginx.resource_config("edge-nginx")));
    (env, nginx)
}

/// Signs and sends `actions` as `signer`; returns the settled record.
fn send_as(env: &Env, agent: &Agent, signer: &str, actions: Value) -> Value {
    let (status, body) = post_command(agent, &sign(&payload(actions), &[env.key(signer)]));
    assert_eq!(status, 202, "{body}");
    wait_settled(agent, body["id"].as_str().expect("id"))
}

fn send(env: &Env, agent: &Agent, actions: Value) -> Value {
    send_as(env, agent, "alice", actions)
}

fn revert(env: &Env, agent: &Agent, id: &str) -> Value {
    let rec = send(env, agent, json!([{"op": "revert", "command": id}]));
    assert_eq!(rec["state"], "kept", "{rec}");
    rec
}

fn id(rec: &Value) -> String {
    rec["id"].as_str().expect("id").to_string()
}

fn status_from(source: Option<Ipv4Addr>, url: &str) -> u16 {
    request("GET", url, source, &[])
        .map(|a| a.status)
        .unwrap_or(0)
}

/// Waits until `url` answers `status` (from `source`), so a test never
/// races a worker that is still draining after a reload.
fn wait_status(source: Option<Ipv4Addr>, url: &str, status: u16) -> Answer {
    wait_for(
        &format!("{url} from {source:?} to answer {status}"),
        Duration::from_secs(20),
        || request("GET", url, source, &[]).filter(|a| a.status == status),
    )
}

#[test]
fn nginx_deny_answers_403_to_the_denied_cidr_only_until_reverted() {
    let (env, nginx) = nginx_env();
    let agent = env.start();
    let home = nginx.url("/");
    assert_eq!(status_from(Some(OTHER_CLIENT), &home), 200);

    let rec = send(
        &env,
        &agent,
        json!([{"resource": "edge-nginx", "op": "nginx.deny", "cidrs": ["127.0.0.2/32", "192.0.2.1/24"]}]),
    );
    assert_eq!(rec["state"], "kept", "{rec}");
    let action = &rec["actions"][0];
    assert_eq!(action["before"]["present"], false, "{action}");
    assert_eq!(action["after"]["present"], true, "{action}");
    assert_eq!(
        action["after"]["cidrs"],
        json!(["127.0.0.2/32", "192.0.2.0/24"]),
        "canonical networks"
    );
    // The agent verified the reload before settling, so no waiting here.
    assert_eq!(status_from(Some(OTHER_CLIENT), &home), 403);
    assert_eq!(
        status_from(Some(OTHER_CLIENT), &nginx.url("/checkout.html")),
        403
    );
    assert_eq!(status_from(None, &home), 200, "127.0.0.1 is not denied");
    let include = String::from_utf8(nginx.include_bytes()).unwrap();
    assert!(include.contains("deny 127.0.0.2/32;"), "{include}");

    revert(&env, &agent, &id(&rec));
    wait_status(Some(OTHER_CLIENT), &home, 200);
    let include = String::from_utf8(nginx.include_bytes()).unwrap();
    assert!(!include.contains("deny 127.0.0.2"), "{include}");
}

#[test]
fn nginx_brownout_sheds_one_path_with_retry_after_and_leaves_others_untouched() {
    let (env, nginx) = nginx_env();
    let agent = env.start();
    let results = nginx.url("/search/results.html");
    assert_eq!(status_from(None, &results), 200);

    // bob is only sre: brownouts are his, denies are not.
    let (status, body) = post_command(
        &agent,
        &sign(
            &payload(
                json!([{"resource": "edge-nginx", "op": "nginx.deny", "cidrs": ["127.0.0.2"]}]),
            ),
            &[env.key("bob")],
        ),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["reason"], "not_permitted");

    let rec = send_as(
        &env,
        &agent,
        "bob",
        json!([{"resource": "edge-nginx", "op": "nginx.brownout", "paths": ["/search"], "retry_after": 120}]),
    );
    assert_eq!(rec["state"], "kept", "{rec}");
    let shed = get(&results).expect("answer");
    assert_eq!(shed.status, 503);
    assert_eq!(shed.header("retry-after"), Some("120"));
    let shed = get(&nginx.url("/search/")).expect("answer");
    assert_eq!(shed.status, 503);
    for other in ["/", "/checkout.html"] {
        let a = get(&nginx.url(other)).expect("answer");
        assert_eq!(a.status, 200, "{other} must be untouched");
        assert_eq!(a.header("retry-after"), None, "{other}");
    }

    // A second brownout with its own status; reverting it leaves the first.
    let second = send_as(
        &env,
        &agent,
        "bob",
        json!([{"resource": "edge-nginx", "op": "nginx.brownout", "paths": ["/checkout.html"], "status": 429, "retry_after": 5}]),
    );
    assert_eq!(second["state"], "kept", "{second}");
    let a = get(&nginx.url("/checkout.html")).expect("answer");
    assert_eq!((a.status, a.header("retry-after")), (429, Some("5")));
    revert(&env, &agent, &id(&second));
    wait_status(None, &nginx.url("/checkout.html"), 200);
    assert_eq!(status_from(None, &results), 503, "the first brownout stays");

    revert(&env, &agent, &id(&rec));
    let a = wait_status(None, &results, 200);
    assert_eq!(a.header("retry-after"), None);
    assert_eq!(status_from(None, &nginx.url("/")), 200);
}

#[test]
fn nginx_entries_survive_an_agent_restart_and_revert_removes_exactly_its_own() {
    let (env, nginx) = nginx_env();
    let mut agent = env.start();
    let deny = send(
        &env,
        &agent,
        json!([{"resource": "edge-nginx", "op": "nginx.deny", "cidrs": ["127.0.0.2/32"]}]),
    );
    assert_eq!(deny["state"], "kept", "{deny}");
    let brownout = send(
        &env,
        &agent,
        json!([{"resource": "edge-nginx", "op": "nginx.brownout", "paths": ["/search/"]}]),
    );
    assert_eq!(brownout["state"], "kept", "{brownout}");
    agent.stop();

    let agent = env.start();
    revert(&env, &agent, &id(&deny));
    wait_status(Some(OTHER_CLIENT), &nginx.url("/checkout.html"), 200);
    // The brownout, applied by the agent before its restart, is still there.
    let a = get(&nginx.url("/search/results.html")).expect("answer");
    assert_eq!((a.status, a.header("retry-after")), (503, Some("60")));
    let include = String::from_utf8(nginx.include_bytes()).unwrap();
    assert!(!include.contains("deny 127.0.0.2"), "{include}");
    assert!(include.contains("return 503;"), "{include}");
    revert(&env, &agent, &id(&brownout));
    wait_status(None, &nginx.url("/search/results.html"), 200);
    // Two hotfixes on one include are never each other's drift.
    let drifts: Vec<Value> = env
        .audit_entries()
        .into_iter()
        .filter(|e| e["event"] == "drifted")
        .collect();
    assert!(drifts.is_empty(), "{drifts:?}");
}

#[test]
fn a_config_that_fails_nginx_t_leaves_nginx_serving_the_old_config() {
    let (env, nginx) = nginx_env();
    let agent = env.start();
    let deny = send(
        &env,
        &agent,
        json!([{"resource": "edge-nginx", "op": "nginx.deny", "cidrs": ["127.0.0.2/32"]}]),
    );
    assert_eq!(deny["state"], "kept", "{deny}");
    let include_before = nginx.include_bytes();

    // An operator's unfinished edit: nginx still runs the loaded config,
    // but `nginx -t` now fails on the whole config.
    nginx.break_main_config();
    let rec = send(
        &env,
        &agent,
        json!([{"resource": "edge-nginx", "op": "nginx.brownout", "paths": ["/search"]}]),
    );
    assert_eq!(rec["state"], "failed", "{rec}");
    let msg = rec.to_string();
    assert!(
        msg.contains("unknown directive") && msg.contains("no_such_directive"),
        "nginx's own message is in the record: {msg}"
    );
    assert_eq!(
        nginx.include_bytes(),
        include_before,
        "the previous include is restored byte for byte"
    );
    // nginx still serves the old config: the deny holds, no brownout.
    assert_eq!(status_from(Some(OTHER_CLIENT), &nginx.url("/")), 403);
    assert_eq!(status_from(None, &nginx.url("/search/results.html")), 200);
}

#[test]
fn injection_attempts_are_invalid_action_and_leave_the_include_unchanged() {
    let (env, nginx) = nginx_env();
    let agent = env.start();
    let deny = send(
        &env,
        &agent,
        json!([{"resource": "edge-nginx", "op": "nginx.deny", "cidrs": ["192.0.2.0/24"]}]),
    );
    assert_eq!(deny["state"], "kept", "{deny}");
    let before = nginx.include_bytes();
    let attempts = [
        json!({"op": "nginx.deny", "cidrs": ["10.0.0.0/8; } server { listen 8081; root /; } #"]}),
        json!({"op": "nginx.deny", "cidrs": ["10.0.0.0/8;\nallow all;"]}),
        json!({"op": "nginx.deny", "cidrs": ["\"10.0.0.0/8\""]}),
        json!({"op": "nginx.deny", "cidrs": ["all"]}),
        json!({"op": "nginx.deny", "cidrs": ["$remote_addr"]}),
        json!({"op": "nginx.deny", "cidrs": ["0.0.0.0/0"]}),
        json!({"op": "nginx.deny", "cidrs": ["10.0.0.0/8"], "raw": "deny all;"}),
        json!({"op": "nginx.brownout", "paths": ["/search\") { return 200; } #"]}),
        json!({"op": "nginx.brownout", "paths": ["/search; }"]}),
        json!({"op": "nginx.brownout", "paths": ["/search\nreturn 200;"]}),
        json!({"op": "nginx.brownout", "paths": ["/search'"]}),
        json!({"op": "nginx.brownout", "paths": ["/$request_uri"]}),
        json!({"op": "nginx.brownout", "paths": ["/{x}"]}),
        json!({"op": "nginx.brownout", "paths": ["search"]}),
        json!({"op": "nginx.brownout", "paths": ["/a"], "status": 200}),
        json!({"op": "nginx.brownout", "paths": ["/a"], "status": "503; }"}),
        json!({"op": "nginx.brownout", "paths": ["/a"], "retry_after": "1; }"}),
        json!({"op": "nginx.brownout", "paths": ["/a"], "retry_after": 864000}),
    ];
    for attempt in attempts {
        let mut action = attempt.clone();
        action["resource"] = json!("edge-nginx");
        let (status, body) = post_command(
            &agent,
            &sign(&payload(json!([action])), &[env.key("alice")]),
        );
        // A control character is refused by the payload parser itself
        // (bad_payload); everything else by the provider (invalid_action).
        let expected = if attempt.to_string().contains("\\n") {
            (400, "bad_payload")
        } else {
            (422, "invalid_action")
        };
        assert_eq!(
            (status, body["reason"].as_str().unwrap_or_default()),
            expected,
            "{attempt}: {body}"
        );
        assert_eq!(
            nginx.include_bytes(),
            before,
            "{attempt} changed the include"
        );
    }
    assert_eq!(status_from(None, &nginx.url("/search/results.html")), 200);
}

/// A test dir whose agent manages `edge-cache`, a real varnishd of its own
/// in front of a counting backend, purged through `how` ("admin" or "http").
fn varnish_env(how: &str) -> (Env, Backend, VarnishServer) {
    let env = Env::new();
    let backend = Backend::start();
    let varnish = VarnishServer::start(&env.path("varnish"), backend.port);
    let resource = match how {
        "admin" => varnish.admin_resource("edge-cache"),
        _ => varnish.http_resource("edge-cache"),
    };
    env.write_policy(&edge_policy(&env));
    env.write_config(&(env.default_config() + &resource));
    (env, backend, varnish)
}

/// GETs `path` through Varnish until the backend has served it `hits`
/// times and Varnish answers it from cache.
fn warm(backend: &Backend, varnish: &VarnishServer, path: &str) {
    let url = varnish.url(path);
    wait_for(
        &format!("{path} to be cached"),
        Duration::from_secs(20),
        || {
            let a = get(&url)?;
            (a.status == 200 && is_hit(&a)).then_some(())
        },
    );
    assert_eq!(backend.hits(path), 1, "{path} fetched once");
}

/// A cache hit: X-Varnish names this request and the one that stored it.
fn is_hit(a: &Answer) -> bool {
    a.header("x-varnish")
        .is_some_and(|v| v.split_whitespace().count() == 2)
}

fn purge(env: &Env, agent: &Agent, params: Value) -> Value {
    let mut action = params;
    action["resource"] = json!("edge-cache");
    action["op"] = json!("cdn.purge");
    let rec = send(env, agent, json!([action]));
    assert_eq!(rec["state"], "kept", "{rec}");
    assert_eq!(rec["actions"][0]["reversible"], false, "{rec}");
    rec
}

#[test]
fn varnish_purge_by_path_through_the_admin_port_refetches_from_the_backend() {
    let (env, backend, varnish) = varnish_env("admin");
    let agent = env.start();
    for p in ["/product/1", "/product/2"] {
        warm(&backend, &varnish, p);
    }

    let rec = purge(&env, &agent, json!({"paths": ["/product/1"]}));
    let after = &rec["actions"][0]["after"];
    let ban = after["requests"][0].as_str().unwrap();
    assert!(
        ban.starts_with("ban obj.http.x-url ~ ") && !ban.contains("req."),
        "an obj.* ban: {ban}"
    );
    // The agent's own check was the next request: a miss, from the backend.
    assert_eq!(after["verified"][0]["path"], "/product/1", "{after}");
    assert_eq!(after["verified"][0]["from_backend"], true, "{after}");
    assert_eq!(backend.hits("/product/1"), 2, "refetched once");
    // Untouched objects stay cached.
    let a = get(&varnish.url("/product/2")).unwrap();
    assert!(is_hit(&a), "{a:?}");
    assert_eq!(backend.hits("/product/2"), 1);
    let out = std::process::Command::new(&varnish.varnishadm)
        .arg("-T")
        .arg(format!("127.0.0.1:{}", varnish.admin_port))
        .arg("-S")
        .arg(&varnish.secret)
        .arg("ban.list")
        .output()
        .expect("varnishadm");
    let bans = String::from_utf8_lossy(&out.stdout);
    assert!(bans.contains("obj.http.x-url ~ ^(/product/1)$"), "{bans}");
    assert!(!bans.contains("req."), "no req.* bans pile up: {bans}");
}

#[test]
fn varnish_purge_by_prefix_and_by_key_misses_only_what_was_named() {
    let (env, backend, varnish) = varnish_env("admin");
    let agent = env.start();
    for p in ["/static/a.css", "/static/b.js", "/product/3", "/home"] {
        warm(&backend, &varnish, p);
    }
    purge(&env, &agent, json!({"prefixes": ["/static/"]}));
    for p in ["/static/a.css", "/static/b.js"] {
        let a = get(&varnish.url(p)).unwrap();
        assert!(!is_hit(&a), "{p} must miss after the purge: {a:?}");
        assert_eq!(backend.hits(p), 2, "{p}");
    }
    assert!(is_hit(&get(&varnish.url("/product/3")).unwrap()));

    // The backend tags /product/3 with the key "product".
    purge(&env, &agent, json!({"keys": ["product"]}));
    let a = get(&varnish.url("/product/3")).unwrap();
    assert!(!is_hit(&a), "{a:?}");
    assert_eq!(backend.hits("/product/3"), 2);
    assert!(is_hit(&get(&varnish.url("/home")).unwrap()));
    assert_eq!(backend.hits("/home"), 1);
}

#[test]
fn varnish_purge_through_the_http_endpoint_refetches_from_the_backend() {
    let (env, backend, varnish) = varnish_env("http");
    let agent = env.start();
    for p in ["/product/1", "/static/a.css", "/home"] {
        warm(&backend, &varnish, p);
    }
    let rec = purge(&env, &agent, json!({"paths": ["/product/1"]}));
    assert_eq!(
        rec["actions"][0]["after"]["verified"][0]["from_backend"],
        true
    );
    assert_eq!(backend.hits("/product/1"), 2);
    purge(&env, &agent, json!({"prefixes": ["/static/"]}));
    assert!(!is_hit(&get(&varnish.url("/static/a.css")).unwrap()));
    assert_eq!(backend.hits("/static/a.css"), 2);
    assert!(is_hit(&get(&varnish.url("/home")).unwrap()));
}

#[test]
fn varnish_refuses_raw_vcl_injection_and_a_held_purge() {
    let (env, backend, varnish) = varnish_env("admin");
    let agent = env.start();
    warm(&backend, &varnish, "/home");
    for params in [
        json!({"ban": "req.url ~ ."}),
        json!({"paths": ["/home\" || obj.status != 0 || obj.http.x ~ \""]}),
        json!({"paths": ["/home\nban req.url ~ ."]}),
        json!({"prefixes": ["/ && obj.ttl > 0s"]}),
        json!({"keys": ["a b"]}),
        json!({"paths": ["/home"], "keys": ["home"]}),
    ] {
        let mut action = params.clone();
        action["resource"] = json!("edge-cache");
        action["op"] = json!("cdn.purge");
        let (status, body) = post_command(
            &agent,
            &sign(&payload(json!([action])), &[env.key("alice")]),
        );
        let expected = if params.to_string().contains("\\n") {
            (400, Some("bad_payload"))
        } else {
            (422, Some("invalid_action"))
        };
        assert_eq!(
            (status, body["reason"].as_str()),
            expected,
            "{params}: {body}"
        );
    }
    let mut held =
        payload(json!([{"resource": "edge-cache", "op": "cdn.purge", "paths": ["/home"]}]));
    held["hold"] = json!("10m");
    let (status, body) = post_command(&agent, &sign(&held, &[env.key("alice")]));
    assert_eq!(
        (status, body["reason"].as_str()),
        (422, Some("invalid_action")),
        "{body}"
    );
    assert!(
        is_hit(&get(&varnish.url("/home")).unwrap()),
        "nothing was purged"
    );
    assert_eq!(backend.hits("/home"), 1);
}

const FASTLY_TOKEN: &str = "fastly-test-token-0123456789";
const FASTLY_SERVICE: &str = "SU1Z0isxPaozGVKXdv0eY";
const FASTLY_OK: &str = r#"{"status":"ok","id":"108-1391560174-974124"}"#;
const CF_TOKEN: &str = "cf-test-token-9876543210";
const CF_ZONE: &str = "023e105f4ecef8ad9ca31a8372d0c353";
const CF_OK: &str = r#"{"success":true,"errors":[],"messages":[],"result":{"id":"023e105f4ecef8ad9ca31a8372d0c353"}}"#;

/// A test dir whose agent manages `edge-cdn`, a `kind` resource talking to
/// a local HTTPS API. Fastly reads its token from a file, Cloudflare from an
/// environment variable.
fn cdn_env(kind: &str) -> (Env, HttpsApi) {
    let env = Env::new();
    let (ok, resource) = match kind {
        "fastly" => {
            let token = env.path("fastly-token");
            std::fs::write(&token, format!("{FASTLY_TOKEN}\n")).unwrap();
            (
                FASTLY_OK,
                format!(
                    "service_id = \"{FASTLY_SERVICE}\"\ntoken_file = \"{}\"\n",
                    token.display()
                ),
            )
        }
        _ => (
            CF_OK,
            format!("zone_id = \"{CF_ZONE}\"\ntoken_env = \"TEST_CF_TOKEN\"\n"),
        ),
    };
    let api = HttpsApi::start(env.dir.path(), 200, ok);
    env.write_policy(&edge_policy(&env));
    env.write_config(&format!(
        "{}\n[resources.edge-cdn]\nkind = \"{kind}\"\nhost = \"www.example.com\"\napi_url = \"{}\"\nca_file = \"{}\"\n{resource}",
        env.default_config(),
        api.url(),
        api.ca_file.display()
    ));
    (env, api)
}

fn cdn_purge(env: &Env, agent: &Agent, params: Value) -> Value {
    let mut action = params;
    action["resource"] = json!("edge-cdn");
    action["op"] = json!("cdn.purge");
    send(env, agent, json!([action]))
}

/// No token may reach a record, a receipt, the journal or the audit log.
fn assert_token_nowhere(env: &Env, rec: &Value, token: &str) {
    assert!(!rec.to_string().contains(token), "{rec}");
    let mut stack = vec![env.path("state")];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&p) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(token),
                "the token is in {}",
                p.display()
            );
        }
    }
}

#[test]
fn fastly_purges_by_url_and_by_surrogate_key_as_the_api_documents() {
    let (env, api) = cdn_env("fastly");
    let agent = env.start();
    let rec = cdn_purge(
        &env,
        &agent,
        json!({"paths": ["/product/1?color=red"], "soft": true}),
    );
    assert_eq!(rec["state"], "kept", "{rec}");
    assert_eq!(rec["actions"][0]["reversible"], false);
    let reqs = api.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    // POST /purge/{cached_url}, cached URL = host + path, no scheme.
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/purge/www.example.com/product/1?color=red");
    assert_eq!(reqs[0].header("fastly-key"), Some(FASTLY_TOKEN));
    assert_eq!(reqs[0].header("fastly-soft-purge"), Some("1"));
    assert_eq!(
        rec["actions"][0]["after"]["purge_ids"],
        json!(["108-1391560174-974124"])
    );

    api.push(200, &[], r#"{"all":"108-1","product":"108-2"}"#);
    let rec = cdn_purge(&env, &agent, json!({"keys": ["product", "all"]}));
    assert_eq!(rec["state"], "kept", "{rec}");
    let reqs = api.requests();
    let r = &reqs[1];
    // POST /service/{service_id}/purge with {"surrogate_keys": [...]}.
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/service/{FASTLY_SERVICE}/purge"));
    assert_eq!(r.header("fastly-key"), Some(FASTLY_TOKEN));
    assert_eq!(r.header("fastly-soft-purge"), None, "a hard purge");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), json!({"surrogate_keys": ["all", "product"]}));
    assert_token_nowhere(&env, &rec, FASTLY_TOKEN);

    // Fastly cannot purge by prefix; the command is refused up front.
    let (status, body) = post_command(
        &agent,
        &sign(
            &payload(
                json!([{"resource": "edge-cdn", "op": "cdn.purge", "prefixes": ["/static/"]}]),
            ),
            &[env.key("alice")],
        ),
    );
    assert_eq!(
        (status, body["reason"].as_str()),
        (422, Some("invalid_action")),
        "{body}"
    );
    assert_eq!(api.requests().len(), 2);
}

#[test]
fn fastly_waits_out_a_429_retry_after_and_fails_on_an_api_error() {
    let (env, api) = cdn_env("fastly");
    let agent = env.start();
    api.push(429, &[("Retry-After", "1")], r#"{"msg":"rate limited"}"#);
    let rec = cdn_purge(&env, &agent, json!({"keys": ["product"]}));
    assert_eq!(rec["state"], "kept", "{rec}");
    assert_eq!(
        rec["actions"][0]["after"]["rate_limit_waits_s"],
        json!([1]),
        "{rec}"
    );
    assert_eq!(api.requests().len(), 2, "retried once after the 429");

    api.push(
        403,
        &[],
        r#"{"msg":"Provided credentials are missing or invalid"}"#,
    );
    let rec = cdn_purge(&env, &agent, json!({"keys": ["product"]}));
    assert_eq!(rec["state"], "failed", "{rec}");
    assert!(rec.to_string().contains("credentials are missing"), "{rec}");
    assert_token_nowhere(&env, &rec, FASTLY_TOKEN);
}

#[test]
fn cloudflare_purges_by_url_prefix_tag_and_host_as_the_api_documents() {
    let (env, api) = cdn_env("cloudflare");
    let agent = env.start_with(&[("TEST_CF_TOKEN", CF_TOKEN)]);
    let cases = [
        (
            json!({"paths": ["/a.css", "/b.js"]}),
            json!({"files": ["https://www.example.com/a.css", "https://www.example.com/b.js"]}),
        ),
        (
            json!({"prefixes": ["/static/"]}),
            json!({"prefixes": ["www.example.com/static/"]}),
        ),
        (json!({"keys": ["product"]}), json!({"tags": ["product"]})),
        (
            json!({"hosts": ["img.example.com"]}),
            json!({"hosts": ["img.example.com"]}),
        ),
    ];
    for (i, (params, body)) in cases.into_iter().enumerate() {
        let rec = cdn_purge(&env, &agent, params.clone());
        assert_eq!(rec["state"], "kept", "{params}: {rec}");
        let reqs = api.requests();
        let r = &reqs[i];
        // POST /zones/{zone_id}/purge_cache, Bearer token, one JSON field.
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, format!("/zones/{CF_ZONE}/purge_cache"));
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {CF_TOKEN}").as_str())
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json(), body, "{params}");
        assert_eq!(rec["actions"][0]["after"]["purge_ids"], json!([CF_ZONE]));
        assert_token_nowhere(&env, &rec, CF_TOKEN);
    }
}

#[test]
fn cloudflare_waits_out_a_429_and_fails_when_the_api_says_no() {
    let (env, api) = cdn_env("cloudflare");
    let agent = env.start_with(&[("TEST_CF_TOKEN", CF_TOKEN)]);
    api.push(429, &[("Retry-After", "1")], r#"{"success":false,"errors":[{"code":971,"message":"Please wait and consider throttling your request speed"}]}"#);
    let rec = cdn_purge(&env, &agent, json!({"keys": ["product"]}));
    assert_eq!(rec["state"], "kept", "{rec}");
    assert_eq!(rec["actions"][0]["after"]["rate_limit_waits_s"], json!([1]));
    assert_eq!(api.requests().len(), 2);
    api.push(200, &[], r#"{"success":false,"errors":[{"code":1012,"message":"Request must contain one of purge_everything, files, tags, hosts or prefixes"}],"messages":[],"result":null}"#);
    let rec = cdn_purge(&env, &agent, json!({"keys": ["product"]}));
    assert_eq!(rec["state"], "failed", "{rec}");
    assert!(rec.to_string().contains("1012"), "{rec}");
}
