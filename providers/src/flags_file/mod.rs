//! `flags-file`: flips flags in a flagd / OpenFeature flag-definition file.
//!
//! Services using an OpenFeature flagd provider in file mode pick up the
//! change on their own, so a kill switch needs no code of ours in the
//! service. The provider only edits `state` and `defaultVariant` of flags the
//! file already has; it never adds a flag, because a typo in an incident must
//! fail loudly instead of creating a flag nobody reads.

mod config;
mod declare;

use std::path::Path;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;

pub use config::FlagsFileConfig;
pub use declare::{KIND, SET, STATE};

use crate::{replace_file, ActionSpec, ManagedFile, OpParams, Provider, ProviderError, State};

/// Params of `flag.set`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetParams {
    flag: String,
    variant: String,
}

impl OpParams for SetParams {
    const FIELDS: &'static [&'static str] = &["flag", "variant"];
}

/// Params of `flag.state`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateParams {
    flag: String,
    state: FlagState,
}

impl OpParams for StateParams {
    const FIELDS: &'static [&'static str] = &["flag", "state"];
}

#[derive(Debug, Deserialize, Clone, Copy)]
enum FlagState {
    #[serde(rename = "ENABLED")]
    Enabled,
    #[serde(rename = "DISABLED")]
    Disabled,
}

impl FlagState {
    fn as_str(self) -> &'static str {
        match self {
            FlagState::Enabled => "ENABLED",
            FlagState::Disabled => "DISABLED",
        }
    }
}

/// The runtime of one `flags-file` resource.
pub struct FlagsFile {
    config: FlagsFileConfig,
    /// The file written, checked at start: never a symlink unless the
    /// config allows it, and then the link's target as it was at start.
    file: ManagedFile,
    /// Serialises read-modify-write cycles on the file.
    lock: Mutex<()>,
}

/// A change to one flag's two mutable fields.
#[derive(Debug, Clone, PartialEq)]
struct FlagFields {
    state: String,
    default_variant: String,
}

impl FlagsFile {
    /// Refuses a `path` that is a symlink unless `follow_symlinks` is set.
    pub fn new(config: FlagsFileConfig) -> Result<Self, ProviderError> {
        let file = ManagedFile::resolve(&config.path, config.follow_symlinks)
            .map_err(|e| ProviderError::Invalid(e.to_string()))?;
        Ok(FlagsFile {
            config,
            file,
            lock: Mutex::new(()),
        })
    }

    fn read(&self) -> Result<Value, ProviderError> {
        self.read_with_bytes().map(|(_, doc)| doc)
    }

    /// Reads and validates the file; returns its exact bytes too.
    fn read_with_bytes(&self) -> Result<(Vec<u8>, Value), ProviderError> {
        let path = self.file.path();
        let bytes = self
            .file
            .read()
            .map_err(|e| ProviderError::io(format!("reading {}", path.display()), e))?;
        let doc: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ProviderError::Failed(format!("{} is not valid JSON: {e}", path.display()))
        })?;
        validate_document(&doc).map_err(|e| {
            ProviderError::Failed(format!("{} is not a valid flagd file: {e}", path.display()))
        })?;
        Ok((bytes, doc))
    }

    /// Validates, writes atomically, reads the file back to validate what is
    /// now on disk, and keeps the previous (validated) bytes as the
    /// last-known-good copy.
    fn write(&self, old_bytes: &[u8], new: &Value) -> Result<(), ProviderError> {
        validate_document(new).map_err(|e| {
            ProviderError::Failed(format!("refusing to write an invalid file: {e}"))
        })?;
        let path = self.file.path();
        self.file
            .replace(&to_pretty(new)?, 0o644, true)
            .map_err(|e| ProviderError::io(format!("writing {}", path.display()), e))?;
        let back = self.read()?;
        if &back != new {
            return Err(ProviderError::Failed(format!(
                "{} changed under us while writing",
                path.display()
            )));
        }
        // A convenience copy for humans: off the durable path on purpose.
        let lkg = self.config.last_known_good_path();
        if let Err(e) = replace_file(&lkg, old_bytes, 0o600, false) {
            tracing::warn!(path = %lkg.display(), error = %e, "cannot keep the last-known-good copy");
        }
        Ok(())
    }

    fn change(
        &self,
        flag: &str,
        edit: impl FnOnce(&mut FlagFields),
    ) -> Result<State, ProviderError> {
        let (bytes, doc) = self.read_with_bytes()?;
        let before = flag_fields(&doc, flag)?;
        let mut after = before.clone();
        edit(&mut after);
        if after != before {
            let mut new = doc.clone();
            set_flag_fields(&mut new, flag, &after)?;
            self.write(&bytes, &new)?;
        }
        Ok(fields_state(flag, &after))
    }
}

fn to_pretty(doc: &Value) -> Result<Vec<u8>, ProviderError> {
    let mut bytes = serde_json::to_vec_pretty(doc)
        .map_err(|e| ProviderError::Failed(format!("encoding flags file: {e}")))?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Checks the parts of the flagd schema the agent relies on, and the ones a
/// flagd client would choke on.
pub fn validate_document(doc: &Value) -> Result<(), String> {
    let flags = doc
        .get("flags")
        .and_then(Value::as_object)
        .ok_or("missing \"flags\" object")?;
    for (name, flag) in flags {
        let flag = flag
            .as_object()
            .ok_or_else(|| format!("flag {name:?} is not an object"))?;
        match flag.get("state").and_then(Value::as_str) {
            Some("ENABLED") | Some("DISABLED") => {}
            _ => return Err(format!("flag {name:?}: state must be ENABLED or DISABLED")),
        }
        let variants = flag
            .get("variants")
            .and_then(Value::as_object)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("flag {name:?}: variants must be a non-empty object"))?;
        let default = flag
            .get("defaultVariant")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("flag {name:?}: defaultVariant must be a string"))?;
        if !variants.contains_key(default) {
            return Err(format!(
                "flag {name:?}: defaultVariant {default:?} is not one of its variants"
            ));
        }
    }
    Ok(())
}

fn flag_object<'a>(doc: &'a Value, flag: &str) -> Result<&'a Map<String, Value>, ProviderError> {
    doc.get("flags")
        .and_then(|f| f.get(flag))
        .and_then(Value::as_object)
        .ok_or_else(|| ProviderError::Invalid(format!("the flags file has no flag {flag:?}")))
}

fn flag_fields(doc: &Value, flag: &str) -> Result<FlagFields, ProviderError> {
    let obj = flag_object(doc, flag)?;
    Ok(FlagFields {
        state: obj
            .get("state")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        default_variant: obj
            .get("defaultVariant")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

fn set_flag_fields(doc: &mut Value, flag: &str, f: &FlagFields) -> Result<(), ProviderError> {
    let obj = doc
        .get_mut("flags")
        .and_then(|fl| fl.get_mut(flag))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| ProviderError::Invalid(format!("the flags file has no flag {flag:?}")))?;
    obj.insert("state".into(), Value::String(f.state.clone()));
    obj.insert(
        "defaultVariant".into(),
        Value::String(f.default_variant.clone()),
    );
    Ok(())
}

fn fields_state(flag: &str, f: &FlagFields) -> State {
    json!({"flag": flag, "state": f.state, "defaultVariant": f.default_variant})
}

fn fields_from_state(state: &State) -> Result<(String, FlagFields), ProviderError> {
    let get = |k: &str| {
        state
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ProviderError::Failed(format!("recorded state has no {k:?}")))
    };
    Ok((
        get("flag")?,
        FlagFields {
            state: get("state")?,
            default_variant: get("defaultVariant")?,
        },
    ))
}

enum Op {
    Set(SetParams),
    State(StateParams),
}

fn parse_op(action: &ActionSpec) -> Result<Op, ProviderError> {
    match action.op.as_str() {
        "flag.set" => Ok(Op::Set(action.parse_params()?)),
        "flag.state" => Ok(Op::State(action.parse_params()?)),
        other => Err(ProviderError::Invalid(format!(
            "a flags-file resource does not support op {other:?} (it supports flag.set and flag.state)"
        ))),
    }
}

impl Op {
    fn flag(&self) -> &str {
        match self {
            Op::Set(p) => &p.flag,
            Op::State(p) => &p.flag,
        }
    }

    fn edit(&self, fields: &mut FlagFields) {
        match self {
            Op::Set(p) => fields.default_variant = p.variant.clone(),
            Op::State(p) => fields.state = p.state.as_str().to_string(),
        }
    }
}

#[async_trait]
impl Provider for FlagsFile {
    fn kind(&self) -> &'static str {
        "flags-file"
    }

    fn validate(&self, action: &ActionSpec) -> Result<(), ProviderError> {
        let op = parse_op(action)?;
        if op.flag().is_empty() {
            return Err(ProviderError::Invalid("flag must not be empty".into()));
        }
        if let Op::Set(p) = &op {
            if p.variant.is_empty() {
                return Err(ProviderError::Invalid("variant must not be empty".into()));
            }
        }
        Ok(())
    }

    fn state_key(&self, action: &ActionSpec) -> String {
        match parse_op(action) {
            Ok(op) => format!("flag:{}", op.flag()),
            Err(_) => format!("op:{}", action.op),
        }
    }

    async fn snapshot(&self, action: &ActionSpec) -> Result<State, ProviderError> {
        let op = parse_op(action)?;
        let doc = self.read()?;
        let fields = flag_fields(&doc, op.flag())?;
        if let Op::Set(p) = &op {
            let variants = flag_object(&doc, &p.flag)?
                .get("variants")
                .and_then(Value::as_object);
            if !variants.is_some_and(|v| v.contains_key(&p.variant)) {
                let known: Vec<&String> = variants.map(|v| v.keys().collect()).unwrap_or_default();
                return Err(ProviderError::Invalid(format!(
                    "flag {:?} has no variant {:?} (it has {known:?})",
                    p.flag, p.variant
                )));
            }
        }
        Ok(fields_state(op.flag(), &fields))
    }

    fn plan(&self, action: &ActionSpec, before: &State) -> Result<State, ProviderError> {
        let op = parse_op(action)?;
        let (flag, mut fields) = fields_from_state(before)?;
        op.edit(&mut fields);
        Ok(fields_state(&flag, &fields))
    }

    async fn apply(&self, action: &ActionSpec) -> Result<State, ProviderError> {
        let op = parse_op(action)?;
        let _guard = self.lock.lock().await;
        self.change(op.flag(), |f| op.edit(f))
    }

    async fn revert(&self, _action: &ActionSpec, before: &State) -> Result<State, ProviderError> {
        let (flag, fields) = fields_from_state(before)?;
        let _guard = self.lock.lock().await;
        self.change(&flag, |f| *f = fields)
    }

    fn reversible(&self, op: &str) -> bool {
        KIND.reversible(op)
    }

    fn watched_path(&self) -> Option<&Path> {
        Some(self.file.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn spec(v: Value) -> ActionSpec {
        let mut params = v.as_object().cloned().unwrap_or_default();
        let op = params
            .remove("op")
            .and_then(|o| o.as_str().map(String::from))
            .unwrap_or_default();
        ActionSpec { op, params }
    }

    fn provider(dir: &tempfile::TempDir) -> FlagsFile {
        let path = dir.path().join("flags.json");
        fs::write(
            &path,
            r#"{"$schema":"https://flagd.dev/schema/v0/flags.json","flags":{"new_flow":{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"on","targeting":{}}}}"#,
        )
        .unwrap();
        FlagsFile::new(FlagsFileConfig {
            path,
            last_known_good: None,
            follow_symlinks: false,
        })
        .unwrap()
    }

    #[test]
    fn validate_names_an_unknown_param() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(&dir);
        let err = p
            .validate(&spec(
                json!({"op":"flag.set","flag":"new_flow","variant":"off","colour":"red"}),
            ))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "flag.set: unknown param \"colour\"; expected flag, variant"
        );
        let err = p
            .validate(&spec(
                json!({"op":"flag.state","flag":"new_flow","state":"DISABLED","resource":"x"}),
            ))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "flag.state: unknown param \"resource\"; expected flag, state"
        );
    }

    #[tokio::test]
    async fn set_and_revert_round_trip_keeps_other_fields() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(&dir);
        let a = spec(json!({"op":"flag.set","flag":"new_flow","variant":"off"}));
        p.validate(&a).unwrap();
        let before = p.snapshot(&a).await.unwrap();
        assert_eq!(p.plan(&a, &before).unwrap()["defaultVariant"], "off");
        let after = p.apply(&a).await.unwrap();
        assert_eq!(after["defaultVariant"], "off");
        let doc: Value = serde_json::from_slice(&fs::read(&p.config.path).unwrap()).unwrap();
        assert_eq!(doc["flags"]["new_flow"]["defaultVariant"], "off");
        assert!(doc["flags"]["new_flow"]["targeting"].is_object());
        assert!(doc["$schema"].is_string());
        assert!(p.config.last_known_good_path().exists());
        p.revert(&a, &before).await.unwrap();
        let doc: Value = serde_json::from_slice(&fs::read(&p.config.path).unwrap()).unwrap();
        assert_eq!(doc["flags"]["new_flow"]["defaultVariant"], "on");
    }

    #[tokio::test]
    async fn unknown_flag_and_variant_are_invalid_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(&dir);
        let original = fs::read(&p.config.path).unwrap();
        for a in [
            json!({"op":"flag.set","flag":"nope","variant":"off"}),
            json!({"op":"flag.set","flag":"new_flow","variant":"maybe"}),
        ] {
            let err = p.snapshot(&spec(a)).await.unwrap_err();
            assert!(matches!(err, ProviderError::Invalid(_)), "{err}");
        }
        assert!(matches!(
            p.validate(&spec(
                json!({"op":"flag.set","flag":"new_flow","variant":"off","x":1})
            )),
            Err(ProviderError::Invalid(_))
        ));
        assert!(matches!(
            p.validate(&spec(
                json!({"op":"flag.state","flag":"new_flow","state":"MAYBE"})
            )),
            Err(ProviderError::Invalid(_))
        ));
        assert_eq!(fs::read(&p.config.path).unwrap(), original);
    }

    #[test]
    fn invalid_documents_are_named() {
        assert!(validate_document(&json!({})).is_err());
        let bad = json!({"flags":{"f":{"state":"ENABLED","variants":{"on":true},"defaultVariant":"off"}}});
        assert!(validate_document(&bad)
            .unwrap_err()
            .contains("defaultVariant"));
    }

    #[tokio::test]
    async fn a_symlinked_path_is_refused_unless_the_config_follows_it() {
        let dir = tempfile::tempdir().unwrap();
        let real = provider(&dir).config.path;
        let link = dir.path().join("current.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let config = |follow_symlinks| FlagsFileConfig {
            path: link.clone(),
            last_known_good: None,
            follow_symlinks,
        };
        let err = FlagsFile::new(config(false)).err().unwrap().to_string();
        assert!(err.contains("is a symlink"), "{err}");
        assert!(err.contains("follow_symlinks = true"), "{err}");

        let p = FlagsFile::new(config(true)).unwrap();
        assert_eq!(
            p.watched_path(),
            Some(fs::canonicalize(&real).unwrap().as_path())
        );
        let a = spec(json!({"op":"flag.set","flag":"new_flow","variant":"off"}));
        p.apply(&a).await.unwrap();
        // The target changed; the link is still a link, pointing at it.
        let doc: Value = serde_json::from_slice(&fs::read(&real).unwrap()).unwrap();
        assert_eq!(doc["flags"]["new_flow"]["defaultVariant"], "off");
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
