//! AWS providers end to end: the real `tourniquet` binary against
//! `moto_server` (from the project's `.venv`; scripts/setup installs it),
//! started per test on an ephemeral loopback port. Resources are seeded and
//! every apply and revert is read back with boto3, a second client that
//! shares no code with ours. Faults the emulator cannot make (throttling,
//! 5xx, access denials, refused and hung connections) come from a proxy in
//! front of it.
//!
//! Where the emulator differs from AWS's documentation, the providers
//! follow the documentation and a `moto_…` test pins the difference.

use std::collections::BTreeSet;

use base64::Engine;
use serde_json::{json, Value};
use tourniquet_e2e::aws::*;
use tourniquet_e2e::aws_fault_proxy::{Fault, FaultProxy};
use tourniquet_e2e::*;

/// alice and bob hold `sre`, carol `security`: a secret rollback needs two
/// sre keys, `waf.block` and `cdn.purge` are security's alone.
fn aws_policy(env: &Env) -> String {
    format!(
        r#"version = 1
max_ttl = "30m"
clock_skew = "2m"

[keys.alice]
public_key = "{}"
roles = ["sre"]

[keys.bob]
public_key = "{}"
roles = ["sre"]

[keys.carol]
public_key = "{}"
roles = ["security"]

[[rules]]
ops = ["secret.rollback"]
resources = ["*"]
roles = ["sre"]
threshold = 2

[[rules]]
ops = ["waf.block", "cdn.purge"]
resources = ["*"]
roles = ["security"]
threshold = 1

[[rules]]
ops = ["lambda.*", "asg.cap", "revert"]
resources = ["*"]
roles = ["sre"]
threshold = 1
"#,
        env.key("alice").public,
        env.key("bob").public,
        env.key("carol").public
    )
}

fn aws_env() -> Env {
    let mut env = Env::new();
    env.add_key("carol");
    env.write_policy(&aws_policy(&env));
    env
}

/// Starts the agent with `resources` (TOML blocks) and the test's fake AWS
/// credentials.
fn start(env: &Env, resources: &str) -> Agent {
    env.write_config(&(env.default_config() + resources));
    env.start_with(AWS_ENV)
}

/// Signs `actions` with `signers` and posts them.
fn post(env: &Env, agent: &Agent, signers: &[&str], p: Value) -> (u16, Value) {
    let keys: Vec<&OperatorKey> = signers.iter().map(|s| env.key(s)).collect();
    post_command(agent, &sign(&p, &keys))
}

/// Sends `actions` and waits until the command settles.
fn send(env: &Env, agent: &Agent, signers: &[&str], actions: Value) -> Value {
    let (status, body) = post(env, agent, signers, payload(actions));
    assert_eq!(status, 202, "{body}");
    wait_settled(agent, body["id"].as_str().expect("id"))
}

fn revert(env: &Env, agent: &Agent, id: &Value) -> Value {
    let rec = send(
        env,
        agent,
        &["alice"],
        json!([{"op": "revert", "command": id}]),
    );
    assert_eq!(rec["state"], "kept", "{rec}");
    rec
}

/// The signed receipt's payload.
fn receipt(rec: &Value) -> Value {
    let b64 = rec["receipt"]["payload"].as_str().expect("receipt payload");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("receipt json")
}

// ---------------------------------------------------------------- seeding

fn lambda_resource(endpoint: &str) -> String {
    format!(
        "\n[resources.checkout-fn]\nkind = \"aws-lambda\"\nfunction = \"checkout\"\nalias = \"live\"\n{}",
        client_fields(endpoint)
    )
}

/// Function `checkout` with versions 1..=3 and alias `live` → 2, with 20%
/// routed to 1.
fn seed_lambda(moto: &Moto) {
    moto.boto3(
        r#"
role = c("iam").create_role(RoleName="checkout-role", AssumeRolePolicyDocument=json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}))["Role"]["Arn"]
l = c("lambda")
l.create_function(FunctionName="checkout", Runtime="python3.12", Role=role, Handler="handler.handler",
                  Code={"ZipFile": zip_bytes()}, Publish=True)
for _ in range(2):
    l.update_function_code(FunctionName="checkout", ZipFile=zip_bytes(), Publish=True)
l.create_alias(FunctionName="checkout", Name="live", FunctionVersion="2",
               RoutingConfig={"AdditionalVersionWeights": {"1": 0.2}})
out([v["Version"] for v in l.list_versions_by_function(FunctionName="checkout")["Versions"]])
"#,
    );
}

/// The alias and concurrency as boto3 sees them.
fn lambda_state(moto: &Moto) -> Value {
    moto.boto3(
        r#"
l = c("lambda")
a = l.get_alias(FunctionName="checkout", Name="live")
cc = l.get_function_concurrency(FunctionName="checkout")
out({"version": a["FunctionVersion"],
     "weights": (a.get("RoutingConfig") or {}).get("AdditionalVersionWeights", {}),
     "reserved": cc.get("ReservedConcurrentExecutions")})
"#,
    )
}

fn secret_resource(endpoint: &str) -> String {
    format!(
        "\n[resources.payments-key]\nkind = \"aws-secretsmanager\"\nsecret_id = \"payments/api-key\"\n{}",
        client_fields(endpoint)
    )
}

fn waf_resource(endpoint: &str, id: &str) -> String {
    format!(
        "\n[resources.blocklist]\nkind = \"aws-wafv2\"\nscope = \"REGIONAL\"\nip_set_name = \"blocklist\"\nip_set_id = \"{id}\"\n{}",
        client_fields(endpoint)
    )
}

/// IP set `blocklist` holding 10.0.0.0/8; returns its id.
fn seed_waf(moto: &Moto) -> String {
    moto.boto3(
        r#"
s = c("wafv2").create_ip_set(Name="blocklist", Scope="REGIONAL", IPAddressVersion="IPV4",
                              Addresses=["10.0.0.0/8"])["Summary"]
out(s["Id"])
"#,
    )
    .as_str()
    .expect("ip set id")
    .to_string()
}

fn waf_addresses(moto: &Moto, id: &str) -> BTreeSet<String> {
    let v = moto.boto3(&format!(
        r#"out(c("wafv2").get_ip_set(Name="blocklist", Scope="REGIONAL", Id="{id}")["IPSet"]["Addresses"])"#
    ));
    serde_json::from_value(v).expect("addresses")
}

fn asg_resource(endpoint: &str) -> String {
    format!(
        "\n[resources.web-asg]\nkind = \"aws-autoscaling\"\ngroup = \"web\"\n{}",
        client_fields(endpoint)
    )
}

/// Group `web`: min 2, max 10, desired 6.
fn seed_asg(moto: &Moto) {
    moto.boto3(
        r#"
a = c("autoscaling")
a.create_launch_configuration(LaunchConfigurationName="web-lc", ImageId="ami-12c6146b", InstanceType="t2.micro")
a.create_auto_scaling_group(AutoScalingGroupName="web", LaunchConfigurationName="web-lc",
                            MinSize=2, MaxSize=10, DesiredCapacity=6, AvailabilityZones=["us-east-1a"])
out(True)
"#,
    );
}

fn asg_size(moto: &Moto) -> Value {
    moto.boto3(
        r#"
g = c("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=["web"])["AutoScalingGroups"][0]
out({"min": g["MinSize"], "max": g["MaxSize"], "desired": g["DesiredCapacity"]})
"#,
    )
}

fn cloudfront_resource(endpoint: &str, id: &str) -> String {
    format!(
        "\n[resources.shop-cdn]\nkind = \"aws-cloudfront\"\ndistribution_id = \"{id}\"\npoll_interval = \"100ms\"\nwait_timeout = \"20s\"\n{}",
        client_fields(endpoint)
    )
}

const DISTRIBUTION: &str = r#"
config = {
    "CallerReference": "shop", "Comment": "shop", "Enabled": True,
    "Origins": {"Quantity": 1, "Items": [{"Id": "origin", "DomainName": "origin.example.com",
        "CustomOriginConfig": {"HTTPPort": 80, "HTTPSPort": 443, "OriginProtocolPolicy": "https-only"}}]},
    "DefaultCacheBehavior": {"TargetOriginId": "origin", "ViewerProtocolPolicy": "allow-all", "MinTTL": 0,
        "ForwardedValues": {"QueryString": False, "Cookies": {"Forward": "none"}}},
}
"#;

fn seed_distribution(moto: &Moto) -> String {
    moto.boto3(&format!(
        "{DISTRIBUTION}\nout(c(\"cloudfront\").create_distribution(DistributionConfig=config)[\"Distribution\"][\"Id\"])"
    ))
    .as_str()
    .expect("distribution id")
    .to_string()
}

// ---------------------------------------------------------------- secrets

#[test]
fn secret_rollback_needs_two_sre_keys_moves_awscurrent_back_and_revert_restores_it() {
    let moto = Moto::start();
    let canary = format!("CANARY-{}", ulid::Ulid::new());
    let seeded = moto.boto3(&format!(
        r#"
sm = c("secretsmanager")
old = sm.create_secret(Name="payments/api-key", SecretString="{canary}-old")["VersionId"]
new = sm.put_secret_value(SecretId="payments/api-key", SecretString="{canary}-new")["VersionId"]
out({{"old": old, "new": new}})
"#
    ));
    let (old, new) = (seeded["old"].clone(), seeded["new"].clone());
    let env = aws_env();
    let mut agent = start(&env, &secret_resource(&moto.url()));
    let check = r#"
sm = c("secretsmanager")
out({"stages": sm.describe_secret(SecretId="payments/api-key")["VersionIdsToStages"],
     "current": sm.get_secret_value(SecretId="payments/api-key", VersionStage="AWSCURRENT")["SecretString"]})
"#;
    let action = json!([{"resource": "payments-key", "op": "secret.rollback"}]);

    // One sre key is not enough.
    let (status, body) = post(&env, &agent, &["alice"], payload(action.clone()));
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("quorum_not_met")),
        "{body}"
    );

    let rec = send(&env, &agent, &["alice", "bob"], action);
    assert_eq!(rec["state"], "kept", "{rec}");
    let a = &receipt(&rec)["actions"][0];
    assert_eq!(a["before"]["current"], new, "{a}");
    assert_eq!(a["before"]["previous"], old, "{a}");
    assert_eq!(a["after"]["current"], old, "{a}");
    assert_eq!(a["after"]["previous"], new, "{a}");
    let seen = moto.boto3(check);
    assert_eq!(
        seen["stages"][old.as_str().unwrap()],
        json!(["AWSCURRENT"]),
        "{seen}"
    );
    assert_eq!(
        seen["stages"][new.as_str().unwrap()],
        json!(["AWSPREVIOUS"]),
        "{seen}"
    );
    assert_eq!(seen["current"], format!("{canary}-old"));

    revert(&env, &agent, &rec["id"]);
    let seen = moto.boto3(check);
    assert_eq!(
        seen["stages"][new.as_str().unwrap()],
        json!(["AWSCURRENT"]),
        "{seen}"
    );
    assert_eq!(
        seen["stages"][old.as_str().unwrap()],
        json!(["AWSPREVIOUS"]),
        "{seen}"
    );
    assert_eq!(seen["current"], format!("{canary}-new"));

    // The secret's value is nowhere the agent writes: not in its logs, its
    // journal, its audit log, or a receipt (whose payload is base64).
    agent.stop();
    let mut texts = vec![agent.logs(), agent.stdout.clone(), agent.later_stdout()];
    let mut stack = vec![env.path("state")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("state dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = String::from_utf8_lossy(&std::fs::read(&path).expect("read")).into_owned();
            for line in text.lines() {
                if let Ok(v) = serde_json::from_str::<Value>(line) {
                    if let Some(p) = v["payload"].as_str() {
                        if let Ok(b) = base64::engine::general_purpose::STANDARD.decode(p) {
                            texts.push(String::from_utf8_lossy(&b).into_owned());
                        }
                    }
                }
            }
            texts.push(text);
        }
    }
    assert!(texts.len() > 5, "found the agent's files");
    for t in &texts {
        assert!(!t.contains(&canary), "a secret value leaked: {t}");
    }
}

/// AWS documents that GetSecretValue without a stage or version returns
/// AWSCURRENT:
/// <https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_GetSecretValue.html>
/// ("If you don't specify either a VersionStage or VersionId, then Secrets
/// Manager returns the AWSCURRENT version"). moto returns the newest value
/// instead once AWSCURRENT has been moved. The provider never reads values;
/// tests read them with `VersionStage="AWSCURRENT"`.
#[test]
fn moto_get_secret_value_without_stage_returns_the_wrong_version_after_a_stage_move() {
    let moto = Moto::start();
    let seen = moto.boto3(
        r#"
sm = c("secretsmanager")
old = sm.create_secret(Name="s", SecretString="old")["VersionId"]
new = sm.put_secret_value(SecretId="s", SecretString="new")["VersionId"]
sm.update_secret_version_stage(SecretId="s", VersionStage="AWSCURRENT", MoveToVersionId=old, RemoveFromVersionId=new)
out({"no_stage": sm.get_secret_value(SecretId="s")["SecretString"],
     "awscurrent": sm.get_secret_value(SecretId="s", VersionStage="AWSCURRENT")["SecretString"]})
"#,
    );
    assert_eq!(seen["awscurrent"], "old");
    assert_eq!(seen["no_stage"], "new", "moto fixed this; drop the pin");
}

// ---------------------------------------------------------------- lambda

#[test]
fn lambda_alias_canary_and_concurrency_cap_apply_and_revert_exactly() {
    let moto = Moto::start();
    seed_lambda(&moto);
    let env = aws_env();
    let agent = start(&env, &lambda_resource(&moto.url()));
    assert_eq!(
        lambda_state(&moto),
        json!({"version": "2", "weights": {"1": 0.2}, "reserved": null})
    );

    // A canary: 3 with 10% on 2.
    let rec = send(
        &env,
        &agent,
        &["alice"],
        json!([{"resource": "checkout-fn", "op": "lambda.alias", "version": "3", "weights": {"2": "10%"}}]),
    );
    assert_eq!(rec["state"], "kept", "{rec}");
    let a = &receipt(&rec)["actions"][0];
    assert_eq!(a["before"]["version"], "2", "{a}");
    assert_eq!(a["before"]["weights"], json!({"1": 0.2}), "{a}");
    assert_eq!(a["after"]["version"], "3", "{a}");
    assert_eq!(a["after"]["tries"]["lambda:UpdateAlias"], 1, "{a}");
    assert_eq!(
        a["change"],
        "checkout-fn lambda.alias live: version 2 (+ version 1 at 20%) → 3 (+ version 2 at 10%)",
        "{a}"
    );
    assert_eq!(
        lambda_state(&moto),
        json!({"version": "3", "weights": {"2": 0.1}, "reserved": null})
    );
    revert(&env, &agent, &rec["id"]);
    assert_eq!(
        lambda_state(&moto),
        json!({"version": "2", "weights": {"1": 0.2}, "reserved": null})
    );

    // A plain rollback clears the routing; a stop (reserved 0) is removed
    // again on revert, since there was no setting before.
    let rec = send(
        &env,
        &agent,
        &["alice"],
        json!([
            {"resource": "checkout-fn", "op": "lambda.alias", "version": "1"},
            {"resource": "checkout-fn", "op": "lambda.concurrency", "reserved": 0}
        ]),
    );
    assert_eq!(rec["state"], "kept", "{rec}");
    assert_eq!(
        lambda_state(&moto),
        json!({"version": "1", "weights": {}, "reserved": 0})
    );
    revert(&env, &agent, &rec["id"]);
    assert_eq!(
        lambda_state(&moto),
        json!({"version": "2", "weights": {"1": 0.2}, "reserved": null})
    );

    // An existing setting is restored, not deleted.
    moto.boto3(r#"c("lambda").put_function_concurrency(FunctionName="checkout", ReservedConcurrentExecutions=50); out(1)"#);
    let rec = send(
        &env,
        &agent,
        &["alice"],
        json!([{"resource": "checkout-fn", "op": "lambda.concurrency", "reserved": 5}]),
    );
    assert_eq!(receipt(&rec)["actions"][0]["before"]["reserved"], 50);
    assert_eq!(lambda_state(&moto)["reserved"], 5);
    revert(&env, &agent, &rec["id"]);
    assert_eq!(lambda_state(&moto)["reserved"], 50);
}

#[test]
fn params_that_cannot_work_are_invalid_and_change_nothing_and_dry_runs_show_both_states() {
    let moto = Moto::start();
    seed_lambda(&moto);
    seed_asg(&moto);
    let waf = seed_waf(&moto);
    let env = aws_env();
    let url = moto.url();
    let agent = start(
        &env,
        &(lambda_resource(&url) + &asg_resource(&url) + &waf_resource(&url, &waf)),
    );
    let lambda_before = lambda_state(&moto);
    for (signer, action, why) in [
        (
            "alice",
            json!({"resource": "checkout-fn", "op": "lambda.alias", "version": "9"}),
            "no version 9",
        ),
        (
            "alice",
            json!({"resource": "checkout-fn", "op": "lambda.alias", "version": "3", "weights": {"9": "0.1"}}),
            "no version 9",
        ),
        (
            "alice",
            json!({"resource": "checkout-fn", "op": "lambda.alias", "version": "3", "weights": {"2": "100%"}}),
            "sum to under 1",
        ),
        (
            "alice",
            json!({"resource": "web-asg", "op": "asg.cap", "max": 1}),
            "below the group's MinSize",
        ),
        (
            "alice",
            json!({"resource": "web-asg", "op": "asg.cap", "max": 3, "desired": 5}),
            "above max",
        ),
        (
            "carol",
            json!({"resource": "blocklist", "op": "waf.block", "cidrs": ["10.0.0.300/8"]}),
            "not a CIDR",
        ),
        (
            "carol",
            json!({"resource": "blocklist", "op": "waf.block", "cidrs": ["2001:db8::/32"]}),
            "IPv4",
        ),
    ] {
        let (status, body) = post(&env, &agent, &[signer], payload(json!([action])));
        assert_eq!(status, 422, "{action}: {body}");
        assert_eq!(body["reason"], "invalid_action", "{body}");
        assert!(
            body["message"].as_str().unwrap_or("").contains(why),
            "{why}: {body}"
        );
    }
    assert_eq!(lambda_state(&moto), lambda_before);
    assert_eq!(asg_size(&moto), json!({"min": 2, "max": 10, "desired": 6}));
    assert_eq!(
        waf_addresses(&moto, &waf),
        BTreeSet::from(["10.0.0.0/8".to_string()])
    );

    // A dry run shows the exact before-state and the intended after-state.
    let mut p = payload(json!([{"resource": "web-asg", "op": "asg.cap", "max": 4}]));
    p["dry_run"] = json!(true);
    let (status, body) = post(&env, &agent, &["alice"], p);
    assert_eq!(status, 202, "{body}");
    let rec = wait_settled(&agent, body["id"].as_str().unwrap());
    let r = receipt(&rec);
    assert_eq!(r["outcome"], "planned", "{r}");
    assert_eq!(
        r["actions"][0]["before"],
        json!({"group": "web", "min": 2, "max": 10, "desired": 6})
    );
    assert_eq!(
        r["actions"][0]["after"],
        json!({"group": "web", "min": 2, "max": 4, "desired": 4})
    );
    assert_eq!(asg_size(&moto), json!({"min": 2, "max": 10, "desired": 6}));
}

// ---------------------------------------------------------------- WAF

#[test]
fn waf_block_adds_cidrs_and_revert_removes_only_its_own_even_after_others_wrote() {
    let moto = Moto::start();
    let waf = seed_waf(&moto);
    let proxy = FaultProxy::start(moto.port);
    let env = aws_env();
    let agent = start(&env, &waf_resource(&proxy.url(), &waf));
    let action = json!([{"resource": "blocklist", "op": "waf.block", "cidrs": ["192.0.2.7/24", "10.0.0.0/8", "198.51.100.9"]}]);

    // sre may not block; security may, alone.
    let (status, body) = post(&env, &agent, &["alice", "bob"], payload(action.clone()));
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("not_permitted")),
        "{body}"
    );

    // The first write loses a lock race: the provider reads again.
    proxy.inject(
        "AWSWAF_20190729.UpdateIPSet",
        Fault::json_error(400, "WAFOptimisticLockException"),
        Some(1),
    );
    let rec = send(&env, &agent, &["carol"], action);
    assert_eq!(rec["state"], "kept", "{rec}");
    let a = &receipt(&rec)["actions"][0];
    assert_eq!(a["before"]["addresses"], json!(["10.0.0.0/8"]), "{a}");
    assert_eq!(a["after"]["lock_races_lost"], 1, "{a}");
    assert_eq!(a["after"]["tries"]["wafv2:UpdateIPSet"], 2, "{a}");
    assert_eq!(a["after"]["tries"]["wafv2:GetIPSet"], 2, "{a}");
    assert_eq!(proxy.faults_for("UpdateIPSet"), 1);
    let want: BTreeSet<String> = ["10.0.0.0/8", "192.0.2.0/24", "198.51.100.9/32"]
        .map(String::from)
        .into();
    assert_eq!(waf_addresses(&moto, &waf), want);

    // Someone else adds an entry behind the agent's back.
    moto.boto3(&format!(
        r#"
w = c("wafv2")
got = w.get_ip_set(Name="blocklist", Scope="REGIONAL", Id="{waf}")
w.update_ip_set(Name="blocklist", Scope="REGIONAL", Id="{waf}",
                Addresses=got["IPSet"]["Addresses"] + ["203.0.113.0/24"], LockToken=got["LockToken"])
out(1)
"#
    ));
    revert(&env, &agent, &rec["id"]);
    let want: BTreeSet<String> = ["10.0.0.0/8", "203.0.113.0/24"].map(String::from).into();
    assert_eq!(
        waf_addresses(&moto, &waf),
        want,
        "10.0.0.0/8 was there before and 203.0.113.0/24 is someone else's: both stay"
    );
}

// ---------------------------------------------------------------- CloudFront

#[test]
fn cloudfront_purge_waits_for_completion_and_is_not_reversible() {
    let moto = Moto::start();
    let dist = seed_distribution(&moto);
    let env = aws_env();
    let agent = start(&env, &cloudfront_resource(&moto.url(), &dist));
    let action =
        json!([{"resource": "shop-cdn", "op": "cdn.purge", "paths": ["/index.html", "/static/*"]}]);

    // Not reversible, so it cannot be held.
    let mut held = payload(action.clone());
    held["hold"] = json!("10m");
    let (status, body) = post(&env, &agent, &["carol"], held);
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("cannot be reverted"),
        "{body}"
    );

    let rec = send(&env, &agent, &["carol"], action);
    assert_eq!(rec["state"], "kept", "{rec}");
    let a = &receipt(&rec)["actions"][0];
    assert_eq!(a["reversible"], false, "{a}");
    assert_eq!(a["after"]["invalidated"], true, "{a}");
    assert!(
        a["after"]["status"]
            .as_str()
            .unwrap_or("")
            .eq_ignore_ascii_case("completed"),
        "{a}"
    );
    let id = a["after"]["invalidation_id"]
        .as_str()
        .expect("invalidation id");
    let seen = moto.boto3(&format!(
        r#"
cf = c("cloudfront")
i = cf.get_invalidation(DistributionId="{dist}", Id="{id}")["Invalidation"]
out({{"paths": sorted(i["InvalidationBatch"]["Paths"]["Items"]),
     "count": cf.list_invalidations(DistributionId="{dist}")["InvalidationList"]["Quantity"]}})
"#
    ));
    assert_eq!(
        seen,
        json!({"paths": ["/index.html", "/static/*"], "count": 1})
    );
}

/// AWS documents an invalidation as `InProgress` until it is `Completed`
/// (<https://docs.aws.amazon.com/cloudfront/latest/APIReference/API_Invalidation.html>),
/// and UpdateDistribution refuses an `IfMatch` that is not the current ETag
/// with PreconditionFailed
/// (<https://docs.aws.amazon.com/cloudfront/latest/APIReference/API_UpdateDistribution.html>).
/// moto answers `COMPLETED` at once, in capitals, and accepts a stale ETag.
/// The provider polls until the status is Completed, compared without case.
#[test]
fn moto_cloudfront_invalidations_complete_at_once_in_capitals_and_stale_etags_are_accepted() {
    let moto = Moto::start();
    let seen = moto.boto3(&format!(
        r#"{DISTRIBUTION}
cf = c("cloudfront")
d = cf.create_distribution(DistributionConfig=config)["Distribution"]
inv = cf.create_invalidation(DistributionId=d["Id"], InvalidationBatch={{
    "Paths": {{"Quantity": 1, "Items": ["/a"]}}, "CallerReference": "r1"}})["Invalidation"]
g = cf.get_distribution_config(Id=d["Id"])
stale_ok = True
try:
    cf.update_distribution(Id=d["Id"], IfMatch="not-the-etag", DistributionConfig=g["DistributionConfig"])
except Exception:
    stale_ok = False
out({{"status": inv["Status"], "stale_etag_accepted": stale_ok}})
"#
    ));
    assert_eq!(
        seen,
        json!({"status": "COMPLETED", "stale_etag_accepted": true})
    );
}

// ---------------------------------------------------------------- Auto Scaling

#[test]
fn asg_cap_lowers_max_and_desired_and_revert_restores_all_three() {
    let moto = Moto::start();
    seed_asg(&moto);
    let env = aws_env();
    let agent = start(&env, &asg_resource(&moto.url()));
    let rec = send(
        &env,
        &agent,
        &["alice"],
        json!([{"resource": "web-asg", "op": "asg.cap", "max": 4}]),
    );
    assert_eq!(rec["state"], "kept", "{rec}");
    let a = &receipt(&rec)["actions"][0];
    assert_eq!(
        a["before"],
        json!({"group": "web", "min": 2, "max": 10, "desired": 6})
    );
    assert_eq!(asg_size(&moto), json!({"min": 2, "max": 4, "desired": 4}));
    revert(&env, &agent, &rec["id"]);
    assert_eq!(asg_size(&moto), json!({"min": 2, "max": 10, "desired": 6}));

    let rec = send(
        &env,
        &agent,
        &["alice"],
        json!([{"resource": "web-asg", "op": "asg.cap", "max": 8, "desired": 3}]),
    );
    assert_eq!(rec["state"], "kept", "{rec}");
    assert_eq!(asg_size(&moto), json!({"min": 2, "max": 8, "desired": 3}));
    revert(&env, &agent, &rec["id"]);
    assert_eq!(asg_size(&moto), json!({"min": 2, "max": 10, "desired": 6}));
}

/// AWS documents that DesiredCapacity must be at most MaxSize
/// (<https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_UpdateAutoScalingGroup.html>:
/// "The desired capacity ... must be greater than or equal to the minimum
/// size of the group and less than or equal to the maximum size"); moto
/// accepts a larger one. The agent checks it itself (see the invalid-params
/// test).
#[test]
fn moto_autoscaling_accepts_desired_above_max() {
    let moto = Moto::start();
    seed_asg(&moto);
    moto.boto3(r#"c("autoscaling").update_auto_scaling_group(AutoScalingGroupName="web", MaxSize=3, DesiredCapacity=5); out(1)"#);
    assert_eq!(asg_size(&moto), json!({"min": 2, "max": 3, "desired": 5}));
}

// ---------------------------------------------------------------- faults

#[test]
fn throttling_and_5xx_are_retried_with_backoff_and_the_receipt_counts_the_tries() {
    let moto = Moto::start();
    seed_lambda(&moto);
    seed_asg(&moto);
    let proxy = FaultProxy::start(moto.port);
    let env = aws_env();
    let agent = start(
        &env,
        &(lambda_resource(&proxy.url()) + &asg_resource(&proxy.url())),
    );
    // Lambda throttles UpdateAlias twice (429); Auto Scaling answers its
    // update with a 500 once and throttles once (400 Throttling).
    proxy.inject(
        "PUT /2015-03-31/functions/checkout/aliases/live",
        Fault::json_error(429, "TooManyRequestsException"),
        Some(2),
    );
    proxy.inject(
        "Action=UpdateAutoScalingGroup",
        Fault::xml_error(500, "InternalFailure"),
        Some(1),
    );
    proxy.inject(
        "Action=UpdateAutoScalingGroup",
        Fault::xml_error(400, "Throttling"),
        Some(1),
    );
    let rec = send(
        &env,
        &agent,
        &["alice"],
        json!([
            {"resource": "web-asg", "op": "asg.cap", "max": 4},
            {"resource": "checkout-fn", "op": "lambda.alias", "version": "1"}
        ]),
    );
    assert_eq!(rec["state"], "kept", "{rec}");
    let r = receipt(&rec);
    let asg_tries = &r["actions"][0]["after"]["tries"];
    assert_eq!(asg_tries["autoscaling:UpdateAutoScalingGroup"], 3, "{r}");
    assert_eq!(
        r["actions"][1]["after"]["tries"]["lambda:UpdateAlias"], 3,
        "{r}"
    );
    assert_eq!(proxy.faults_for("UpdateAutoScalingGroup"), 2);
    assert_eq!(proxy.faults_for("/aliases/live"), 2);
    assert_eq!(lambda_state(&moto)["version"], "1");
    assert_eq!(asg_size(&moto)["max"], 4);
}

#[test]
fn when_action_2_fails_action_1_is_reverted_and_no_half_state_is_left() {
    let moto = Moto::start();
    seed_lambda(&moto);
    let proxy = FaultProxy::start(moto.port);
    let env = aws_env();
    let agent = start(&env, &lambda_resource(&proxy.url()));
    let before = lambda_state(&moto);
    // AWS goes away for the alias update, whatever the retries.
    proxy.inject(
        "PUT /2015-03-31/functions/checkout/aliases/live",
        Fault::Close,
        None,
    );
    let rec = send(
        &env,
        &agent,
        &["alice"],
        json!([
            {"resource": "checkout-fn", "op": "lambda.concurrency", "reserved": 0},
            {"resource": "checkout-fn", "op": "lambda.alias", "version": "1"}
        ]),
    );
    assert_eq!(rec["state"], "failed", "{rec}");
    let r = receipt(&rec);
    assert_eq!(r["outcome"], "failed", "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap_or("")
            .contains("lambda:UpdateAlias"),
        "{r}"
    );
    let (cap, alias) = (&r["actions"][0], &r["actions"][1]);
    assert_eq!(
        (cap["applied"].as_bool(), cap["reverted"].as_bool()),
        (Some(true), Some(true)),
        "{cap}"
    );
    assert_eq!(alias["applied"], false, "{alias}");
    assert!(
        alias["error"]
            .as_str()
            .unwrap_or("")
            .contains("gave up after 4 tries"),
        "{alias}"
    );
    assert_eq!(
        lambda_state(&moto),
        before,
        "the concurrency cap was taken back"
    );
}

#[test]
fn a_hung_endpoint_times_out_instead_of_hanging() {
    let moto = Moto::start();
    seed_asg(&moto);
    let proxy = FaultProxy::start(moto.port);
    let env = aws_env();
    let resource = asg_resource(&proxy.url())
        .replace("attempt_timeout = \"5s\"", "attempt_timeout = \"500ms\"")
        .replace("operation_timeout = \"20s\"", "operation_timeout = \"2s\"")
        .replace("max_attempts = 4", "max_attempts = 2");
    let agent = start(&env, &resource);
    proxy.inject("Action=UpdateAutoScalingGroup", Fault::Hang, None);
    let rec = send(
        &env,
        &agent,
        &["alice"],
        json!([{"resource": "web-asg", "op": "asg.cap", "max": 4}]),
    );
    assert_eq!(rec["state"], "failed", "{rec}");
    let r = receipt(&rec);
    let msg = r["message"].as_str().unwrap_or("");
    assert!(msg.contains("no answer within"), "{r}");
    assert!(msg.contains("gave up after 2 tries"), "{r}");
    assert_eq!(proxy.faults_for("UpdateAutoScalingGroup"), 2);
    assert_eq!(asg_size(&moto), json!({"min": 2, "max": 10, "desired": 6}));
}

#[test]
fn access_denied_names_the_missing_iam_action() {
    let moto = Moto::start();
    seed_lambda(&moto);
    let proxy = FaultProxy::start(moto.port);
    let env = aws_env();
    let agent = start(&env, &lambda_resource(&proxy.url()));
    proxy.inject(
        "/concurrency",
        Fault::json_error(403, "AccessDeniedException"),
        None,
    );
    let rec = send(
        &env,
        &agent,
        &["alice"],
        json!([{"resource": "checkout-fn", "op": "lambda.concurrency", "reserved": 0}]),
    );
    assert_eq!(rec["state"], "failed", "{rec}");
    let msg = rec["message"].as_str().unwrap_or("").to_string();
    assert!(
        msg.contains("needs the IAM permission lambda:GetFunctionConcurrency"),
        "{msg}"
    );
    assert_eq!(
        proxy.faults_for("/concurrency"),
        1,
        "access denied is not retried"
    );
}

// ---------------------------------------------------------------- IAM policy

/// `snake_case` → `PascalCase`, with the IAM spelling of "IP".
fn iam_name(op: &str) -> String {
    op.split('_')
        .map(|w| match w {
            "ip" => "IP".to_string(),
            w => {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            }
        })
        .collect()
}

#[test]
fn every_sdk_operation_the_providers_call_is_in_the_iam_policy_and_nothing_else() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let policy: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("infra/aws/iam-policy.json")).expect("iam-policy.json"),
    )
    .expect("policy json");
    let granted: BTreeSet<String> = policy["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .flat_map(|s| s["Action"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    let mut called = BTreeSet::new();
    for (dir, service) in [
        ("aws_secretsmanager", "secretsmanager"),
        ("aws_lambda", "lambda"),
        ("aws_wafv2", "wafv2"),
        ("aws_cloudfront", "cloudfront"),
        ("aws_autoscaling", "autoscaling"),
    ] {
        let src = std::fs::read_to_string(root.join("providers/src").join(dir).join("mod.rs"))
            .expect("provider source");
        let mut ops = 0;
        // `client.op(` or, as rustfmt splits chains, `client\n    .op(`;
        // not `self.client()` nor `self.client.get_or_init(`.
        for (i, _) in src.match_indices("client") {
            let before = src[..i].chars().next_back().unwrap_or(' ');
            if before == '.' || before.is_ascii_alphanumeric() || before == '_' {
                continue;
            }
            let Some(rest) = src[i + "client".len()..].trim_start().strip_prefix('.') else {
                continue;
            };
            let op: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if op.is_empty() || !rest[op.len()..].starts_with("()") {
                continue;
            }
            let action = format!("{service}:{}", iam_name(&op));
            // The call site names the same action, for errors and counting.
            assert!(
                src.contains(&format!("\"{action}\"")),
                "{dir}: {op} is not called as {action}"
            );
            called.insert(action);
            ops += 1;
        }
        assert!(ops > 0, "{dir}: no SDK calls found");
    }
    let missing: Vec<_> = called.difference(&granted).collect();
    assert!(missing.is_empty(), "the IAM policy lacks {missing:?}");
    let extra: Vec<_> = granted.difference(&called).collect();
    assert!(
        extra.is_empty(),
        "the IAM policy grants actions no provider calls: {extra:?}"
    );
}
