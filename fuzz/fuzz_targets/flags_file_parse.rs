//! A flagd flags file, as the `flags-file` provider reads it from disk: the
//! bytes parse as JSON and must pass `validate_document`. A file that passes
//! then goes through the real provider (snapshot, plan, apply, revert of
//! `flag.set` on its first flag), which must leave a valid file, and after
//! the revert the very document it started from.
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use tourniquet_providers::flags_file::{validate_document, FlagsFile, FlagsFileConfig};
use tourniquet_providers::{ActionSpec, Provider};

fn read(path: &std::path::Path) -> Value {
    let bytes = std::fs::read(path).expect("the flags file is there");
    serde_json::from_slice(&bytes).expect("the provider wrote JSON")
}

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if validate_document(&doc).is_err() {
        return;
    }
    // The first flag, and a variant to switch it to.
    let Some((flag, fields)) = doc["flags"].as_object().and_then(|f| f.iter().next()) else {
        return;
    };
    let Some(variant) = fields["variants"]
        .as_object()
        .and_then(|v| v.keys().find(|k| fields["defaultVariant"] != k.as_str()))
    else {
        return;
    };

    static N: AtomicU64 = AtomicU64::new(0);
    let dir =
        tourniquet_fuzz::scratch_dir().join(format!("f{}", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir(&dir).expect("a scratch dir");
    let path = dir.join("flags.json");
    std::fs::write(&path, data).expect("writing the flags file");
    // From the config schema, as the agent builds it: defaults included.
    let config: FlagsFileConfig =
        serde_json::from_value(json!({ "path": path })).expect("a flags-file config");
    let provider = FlagsFile::new(config).expect("a flags-file provider");
    let mut params = Map::new();
    params.insert("flag".into(), Value::String(flag.clone()));
    params.insert("variant".into(), Value::String(variant.clone()));
    let action = ActionSpec {
        op: "flag.set".into(),
        params,
    };

    let rt = tourniquet_fuzz::runtime();
    if provider.validate(&action).is_ok() {
        let before = rt
            .block_on(provider.snapshot(&action))
            .expect("a valid file's flag and variant snapshot");
        let _ = provider.plan(&action, &before);
        rt.block_on(provider.apply(&action))
            .expect("flag.set applies to a valid file");
        let after = read(&path);
        validate_document(&after).expect("the provider writes only valid files");
        assert_eq!(after["flags"][flag]["defaultVariant"], variant.as_str());
        rt.block_on(provider.revert(&action, &before))
            .expect("the revert applies");
        assert_eq!(read(&path), doc, "the revert restores the document");
    }
    std::fs::remove_dir_all(&dir).expect("cleaning the scratch dir");
});
