//! Typed parsing of the `with` table with errors that name the offending key.
//!
//! The JSON is re-printed in pretty form (one key per line) before it is
//! deserialized, so the line of a serde error tells which key it is about.
//! No extra dependency (such as `serde_path_to_error`) is needed for that.

use serde::de::DeserializeOwned;

use crate::{ConfigKey, StageError};

/// Parses `json` (the stage's `with` table) into `T`.
///
/// Empty text and `null` count as `{}`. Errors become
/// `StageError::Config("with.<key>: <what is wrong>")`.
pub(crate) fn parse<T: DeserializeOwned>(json: &str) -> Result<T, StageError> {
    let value = parse_value(json)?;
    let pretty = serde_json::to_string_pretty(&value)
        .map_err(|e| StageError::Config(format!("with: {e}")))?;
    serde_json::from_str(&pretty).map_err(|e| StageError::Config(describe(&pretty, &e)))
}

/// [`parse`] after [`fill_defaults`].
pub(crate) fn parse_with_defaults<T: DeserializeOwned>(
    json: &str,
    keys: &[ConfigKey],
) -> Result<T, StageError> {
    if keys.is_empty() {
        return parse(json);
    }
    let mut value = parse_value(json)?;
    fill_defaults(&mut value, keys)?;
    parse(&value.to_string())
}

/// Sets every optional key that `value` lacks to its declared default.
/// A default that is not JSON is the plugin's bug, reported as internal.
pub(crate) fn fill_defaults(
    value: &mut serde_json::Value,
    keys: &[ConfigKey],
) -> Result<(), StageError> {
    let Some(map) = value.as_object_mut() else {
        return Ok(());
    };
    for key in keys {
        let Some(default) = key.default_value.as_deref() else {
            continue;
        };
        if key.required || map.contains_key(&key.name) {
            continue;
        }
        let parsed = serde_json::from_str(default).map_err(|e| {
            StageError::Internal(format!(
                "default of key {:?} is not JSON ({default}): {e}",
                key.name
            ))
        })?;
        map.insert(key.name.clone(), parsed);
    }
    Ok(())
}

/// Parses the `with` table into a JSON value (`{}` when empty or `null`).
pub(crate) fn parse_value(json: &str) -> Result<serde_json::Value, StageError> {
    let trimmed = json.trim();
    if trimmed.is_empty() {
        return Ok(serde_json::Value::Object(Default::default()));
    }
    match serde_json::from_str(trimmed) {
        Ok(serde_json::Value::Null) => Ok(serde_json::Value::Object(Default::default())),
        Ok(v) => Ok(v),
        Err(e) => Err(StageError::Config(format!("with: not valid JSON: {e}"))),
    }
}

fn describe(pretty: &str, err: &serde_json::Error) -> String {
    let full = err.to_string();
    // serde_json appends " at line L column C"; the key path replaces it.
    let msg = match full.rfind(" at line ") {
        Some(i) if err.line() > 0 => full[..i].to_string(),
        _ => full,
    };
    let mut path = key_path(pretty, err.line());
    let msg = match missing_field(&msg) {
        Some(field) => {
            path.push(field.to_string());
            "required key is missing".to_string()
        }
        None => msg,
    };
    let mut out = String::from("with");
    for key in &path {
        out.push('.');
        out.push_str(key);
    }
    out.push_str(": ");
    out.push_str(&msg);
    out
}

fn missing_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("missing field `")?;
    rest.strip_suffix('`')
}

/// Keys leading to `line` (1-based) of a `serde_json::to_string_pretty` text.
fn key_path(pretty: &str, line: usize) -> Vec<String> {
    let lines: Vec<&str> = pretty.lines().collect();
    if line == 0 || lines.is_empty() {
        return Vec::new();
    }
    let idx = (line - 1).min(lines.len() - 1);
    let here = lines[idx];
    let trimmed = here.trim_start();
    let mut path = Vec::new();
    let mut limit = indent(here);
    if trimmed.starts_with('}') || trimmed.starts_with(']') {
        // A closing bracket belongs to the key that opened it (same indent).
        limit += 1;
    } else if let Some(key) = key_of(trimmed) {
        path.push(key);
    }
    for l in lines[..idx].iter().rev() {
        if limit == 0 {
            break;
        }
        let ind = indent(l);
        if ind < limit {
            if let Some(key) = key_of(l.trim_start()) {
                path.push(key);
            }
            limit = ind;
        }
    }
    path.reverse();
    path
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// `"key": ...` → `key`.
fn key_of(line: &str) -> Option<String> {
    if !line.starts_with('"') {
        return None;
    }
    let bytes = line.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => break,
            _ => i += 1,
        }
    }
    if i >= bytes.len() || !line[i + 1..].starts_with(": ") {
        return None;
    }
    serde_json::from_str(&line[..=i]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "kebab-case", deny_unknown_fields)]
    #[allow(dead_code)]
    struct With {
        image: String,
        #[serde(default)]
        sha_length: Option<u32>,
        #[serde(default)]
        latest: Option<bool>,
        #[serde(default)]
        nested: Option<Nested>,
        #[serde(default)]
        list: Vec<u32>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Nested {
        inner: u8,
    }

    fn err(json: &str) -> String {
        match parse::<With>(json) {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(StageError::Config(m)) => m,
            Err(other) => panic!("not a config error: {other:?}"),
        }
    }

    #[test]
    fn parses_valid_config() {
        let w: With = parse(r#"{"image":"a/b","sha-length":12}"#).unwrap();
        assert_eq!(w.image, "a/b");
        assert_eq!(w.sha_length, Some(12));
    }

    #[test]
    fn missing_required_key_is_named() {
        assert_eq!(err("{}"), "with.image: required key is missing");
        assert_eq!(err(""), "with.image: required key is missing");
        assert_eq!(err("null"), "with.image: required key is missing");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let m = err(r#"{"image":"x","sha-length":"seven"}"#);
        assert!(
            m.starts_with("with.sha-length: invalid type: string"),
            "{m}"
        );
        let m = err(r#"{"latest":1,"image":"x"}"#);
        assert!(m.starts_with("with.latest: invalid type: integer"), "{m}");
        let m = err(r#"{"image":{"a":1}}"#);
        assert!(m.starts_with("with.image: invalid type: map"), "{m}");
    }

    #[test]
    fn nested_and_list_errors_name_the_path() {
        let m = err(r#"{"image":"x","nested":{"inner":300}}"#);
        assert!(m.starts_with("with.nested.inner: invalid value"), "{m}");
        let m = err(r#"{"image":"x","nested":{}}"#);
        assert_eq!(m, "with.nested.inner: required key is missing");
        let m = err(r#"{"image":"x","list":[1,"two"]}"#);
        assert!(m.starts_with("with.list: invalid type: string"), "{m}");
    }

    #[test]
    fn unknown_key_is_named() {
        let m = err(r#"{"image":"x","colour":"red"}"#);
        assert!(m.starts_with("with.colour: unknown field `colour`"), "{m}");
    }

    #[test]
    fn invalid_json_is_a_config_error() {
        let m = err("{nope");
        assert!(m.starts_with("with: not valid JSON"), "{m}");
    }

    #[test]
    fn declared_defaults_fill_missing_keys_only() {
        #[derive(Deserialize)]
        #[serde(rename_all = "kebab-case", deny_unknown_fields)]
        struct W {
            who: String,
            retries: u32,
            image: String,
        }
        let keys = [
            ConfigKey::optional("who", "w", "\"world\""),
            ConfigKey::optional("retries", "r", "3"),
            ConfigKey::required("image", "i"),
        ];
        let w: W = parse_with_defaults(r#"{"image":"a","retries":5}"#, &keys).unwrap();
        assert_eq!(
            (w.who.as_str(), w.retries, w.image.as_str()),
            ("world", 5, "a")
        );
        // A required key gets no default: still named as missing.
        let e = parse_with_defaults::<W>("{}", &keys).err().unwrap();
        assert_eq!(e.message(), "config: with.image: required key is missing");
        let bad = [ConfigKey::optional("who", "w", "world")];
        let e = parse_with_defaults::<W>("{}", &bad).err().unwrap();
        assert!(
            e.message().starts_with("internal: default of key \"who\""),
            "{}",
            e.message()
        );
    }

    #[test]
    fn keys_with_escapes() {
        assert_eq!(key_of(r#""a\"b": 1"#).as_deref(), Some("a\"b"));
        assert_eq!(key_of(r#""plain","#), None);
    }
}
