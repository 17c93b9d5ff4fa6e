//! What a command asks of an nginx resource, and the managed include the
//! provider reads back. The first byte picks the input:
//!
//! - 0: lines, each tried as a CIDR and as a path prefix. An accepted CIDR
//!   is canonical (it parses back to itself) and holds nothing nginx's
//!   parser gives meaning to.
//! - 1, 2: the params of `nginx.deny` or `nginx.brownout` as JSON, through
//!   the provider's `validate`, `state_key` and `plan`.
//! - 3: the include file's text, read back by the provider's `snapshot`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use tourniquet_providers::nginx::{check_path, parse_cidr, Nginx, NginxConfig};
use tourniquet_providers::{ActionSpec, Provider};

fn provider() -> &'static Nginx {
    static P: OnceLock<Nginx> = OnceLock::new();
    P.get_or_init(|| {
        // From the config schema, as the agent builds it. The commands are
        // never run: the target does not apply.
        let config: NginxConfig = serde_json::from_value(json!({
            "include": tourniquet_fuzz::scratch_dir().join("hotfixes.conf"),
            "test_command": ["false"],
            "reload_command": ["false"],
        }))
        .expect("an nginx config");
        Nginx::new(config).expect("an nginx provider")
    })
}

fn action(op: &str, params: Map<String, Value>) -> ActionSpec {
    ActionSpec {
        op: op.into(),
        params,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            for line in text.split('\n') {
                if let Ok(cidr) = parse_cidr(line) {
                    assert_eq!(
                        parse_cidr(&cidr).as_ref(),
                        Ok(&cidr),
                        "{line:?} is canonical"
                    );
                    assert!(
                        cidr.bytes()
                            .all(|b| b.is_ascii_hexdigit() || matches!(b, b'.' | b':' | b'/')),
                        "{cidr:?} holds only address characters"
                    );
                }
                if check_path(line).is_ok() {
                    assert!(
                        !line.contains([';', '{', '}', '"', '\'', '$', '\\', ' ', '\n', '#']),
                        "{line:?} holds nginx syntax"
                    );
                }
            }
        }
        op @ (1 | 2) => {
            let Ok(Value::Object(params)) = serde_json::from_slice::<Value>(rest) else {
                return;
            };
            let op = if op == 1 {
                "nginx.deny"
            } else {
                "nginx.brownout"
            };
            let a = action(op, params);
            let p = provider();
            let valid = p.validate(&a).is_ok();
            let key = p.state_key(&a);
            assert_eq!(valid, key.starts_with("entry:"), "{key}");
            if valid {
                let planned = p
                    .plan(&a, &json!({"present": false}))
                    .expect("a valid action plans");
                assert_eq!(planned["present"], true);
            }
        }
        _ => {
            let p = provider();
            std::fs::write(tourniquet_fuzz::scratch_dir().join("hotfixes.conf"), rest)
                .expect("writing the include");
            let mut params = Map::new();
            params.insert("cidrs".into(), json!(["10.0.0.0/8"]));
            let a = action("nginx.deny", params);
            let _ = tourniquet_fuzz::runtime().block_on(p.snapshot(&a));
        }
    }
});
