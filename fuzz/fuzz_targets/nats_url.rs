//! NATS server URL lists from the agent config and the CLI's `--to`:
//! userinfo split out for the client, credentials redacted for logs, and
//! subject tokens (fleet names, agent ids) checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tourniquet::transport::nats::fleet::{redact_url, split_userinfo, valid_token};

/// Everything after the first `://` of a URL.
fn after_scheme(url: &str) -> &str {
    url.split_once("://").map_or("", |(_, rest)| rest)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (bare, _auth) = split_userinfo(text);
    assert_eq!(bare.len(), text.split(',').count(), "one bare URL per URL");
    for url in &bare {
        assert!(
            !after_scheme(url).contains('@'),
            "no userinfo is left in {url:?}"
        );
    }
    let redacted = redact_url(text);
    for url in redacted.split(',') {
        if let Some((_, rest)) = url.split_once("://") {
            if let Some(at) = rest.rfind('@') {
                assert_eq!(&rest[..at], "***", "userinfo is redacted in {url:?}");
            }
        }
    }
    if valid_token(text) {
        assert!(
            !text.contains(['.', '*', '>', ' ', '\t', '\r', '\n']),
            "a subject token has no separators or wildcards: {text:?}"
        );
    }
});
