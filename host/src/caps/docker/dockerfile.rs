//! The images a Dockerfile reads, found on the host before the engine sees
//! it: every `FROM` that is not an earlier stage, every `COPY --from=` (and
//! `RUN --mount=…,from=`) that is not a stage, with `ARG`s substituted as
//! the engine would. What cannot be told for sure (a variable nobody set, a
//! builder-provided platform variable) is refused rather than guessed.
//!
//! Parsed as the engine's Dockerfile parser does: `# escape=` directive,
//! line continuations, comment lines (also inside continuations),
//! case-insensitive instructions, `FROM [--platform=…] image [AS name]`.
use std::collections::HashMap;

use crate::grants::image::ImageRef;

/// An image the Dockerfile reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUse {
    /// 1-based line of the instruction.
    pub line: usize,
    /// `FROM`, `COPY --from` or `RUN --mount from`.
    pub instruction: &'static str,
    pub image: ImageRef,
}

/// Variables the builder itself may set; a Dockerfile depending on them
/// cannot be checked before the build.
const BUILDER_ARGS: &[&str] = &[
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
];

/// What the host knows of a global ARG.
#[derive(Debug, Clone)]
enum Var {
    Value(String),
    /// Declared without a value and not passed.
    Unset,
    /// Its default could not be resolved, and why.
    Unknown(String),
}

/// A logical line: an instruction and its arguments.
struct Line {
    number: usize,
    keyword: String,
    args: String,
}

/// The `# escape=` parser directive (default `\`).
fn escape_char(text: &str) -> char {
    for line in text.lines() {
        let t = line.trim();
        let Some(rest) = t.strip_prefix('#') else {
            return '\\';
        };
        let Some((key, value)) = rest.split_once('=') else {
            return '\\';
        };
        let key = key.trim().to_ascii_lowercase();
        if !key.chars().all(|c| c.is_ascii_alphanumeric()) || key.is_empty() {
            return '\\';
        }
        if key == "escape" {
            return if value.trim() == "`" { '`' } else { '\\' };
        }
    }
    '\\'
}

fn logical_lines(text: &str, escape: char) -> Vec<Line> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.split('\n').enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = raw.trim_start();
        // Comment and empty lines are dropped, inside continuations too.
        if trimmed.starts_with('#') || trimmed.trim().is_empty() {
            continue;
        }
        let end = raw.trim_end();
        let (body, continues) = match end.strip_suffix(escape) {
            Some(b) => (b, true),
            None => (raw, false),
        };
        let (start, mut acc) = current.take().unwrap_or((i + 1, String::new()));
        acc.push_str(body);
        if continues {
            current = Some((start, acc));
        } else {
            out.push((start, acc));
        }
    }
    if let Some(last) = current {
        out.push(last);
    }
    out.into_iter()
        .filter_map(|(number, l)| {
            let l = l.trim_start();
            let (kw, args) = l.split_once(|c: char| c.is_whitespace()).unwrap_or((l, ""));
            (!kw.is_empty()).then(|| Line {
                number,
                keyword: kw.to_ascii_uppercase(),
                args: args.trim().to_string(),
            })
        })
        .collect()
}

/// Leading `--flag=value` words and the rest.
fn flags(args: &str) -> (Vec<(String, String)>, &str) {
    let mut out = Vec::new();
    let mut rest = args.trim_start();
    while let Some(after) = rest.strip_prefix("--") {
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let word = &after[..end];
        let (k, v) = word.split_once('=').unwrap_or((word, ""));
        out.push((k.to_ascii_lowercase(), v.to_string()));
        rest = after[end..].trim_start();
    }
    (out, rest)
}

/// Expands `$VAR`, `${VAR}`, `${VAR:-w}`, `${VAR-w}`, `${VAR:+w}`,
/// `${VAR+w}`, quotes and escapes in one word, as the engine does. `vars`
/// holds the known values (`None`: declared without a value).
fn expand(word: &str, escape: char, vars: &HashMap<String, Var>) -> Result<String, String> {
    let mut out = String::new();
    let chars: Vec<char> = word.chars().collect();
    let mut i = 0;
    let mut quote: Option<char> = None;
    while i < chars.len() {
        let c = chars[i];
        if quote != Some('\'') && c == escape && i + 1 < chars.len() {
            out.push(chars[i + 1]);
            i += 2;
            continue;
        }
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                i += 1;
                continue;
            }
            (Some(q), _) if c == q => {
                quote = None;
                i += 1;
                continue;
            }
            (Some('\''), _) => {
                out.push(c);
                i += 1;
                continue;
            }
            _ => {}
        }
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        i += 1;
        if chars.get(i) == Some(&'{') {
            let close = chars[i..]
                .iter()
                .position(|&c| c == '}')
                .ok_or("an unterminated `${`")?;
            let inner: String = chars[i + 1..i + close].iter().collect();
            i += close + 1;
            out.push_str(&substitute(&inner, vars)?);
        } else {
            let len = chars[i..]
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
                .unwrap_or(chars.len() - i);
            if len == 0 {
                out.push('$');
                continue;
            }
            let name: String = chars[i..i + len].iter().collect();
            i += len;
            out.push_str(&lookup(vars, &name)?.unwrap_or_default());
        }
    }
    if quote.is_some() {
        return Err("an unterminated quote".into());
    }
    Ok(out)
}

/// A variable's value (`None`: declared without one), or why the host
/// cannot know it before the build.
fn lookup(vars: &HashMap<String, Var>, name: &str) -> Result<Option<String>, String> {
    match vars.get(name) {
        Some(Var::Value(v)) => return Ok(Some(v.clone())),
        Some(Var::Unset) if !BUILDER_ARGS.contains(&name) => return Ok(None),
        Some(Var::Unknown(why)) => return Err(format!("ARG `{name}`: {why}")),
        _ => {}
    }
    if BUILDER_ARGS.contains(&name) {
        return Err(format!(
            "`${name}` is set by the builder, so the image cannot be checked before the build; name the image"
        ));
    }
    Err(format!(
        "`${name}` is not an ARG declared before the first FROM, so its value cannot be known; declare it with a value or pass it as a build arg"
    ))
}

/// What `${inner}` stands for: `NAME`, or `NAME` with one of the
/// `:-`, `-`, `:+`, `+` modifiers and a word without `$`.
fn substitute(inner: &str, vars: &HashMap<String, Var>) -> Result<String, String> {
    let name_end = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, op) = inner.split_at(name_end);
    if name.is_empty() {
        return Err(format!(
            "`${{{inner}}}` is not a variable the host can resolve"
        ));
    }
    let (modifier, w) = if let Some(w) = op.strip_prefix(":-") {
        ("-", Some(w))
    } else if let Some(w) = op.strip_prefix(":+") {
        ("+", Some(w))
    } else if let Some(w) = op.strip_prefix('-') {
        ("-=", Some(w))
    } else if let Some(w) = op.strip_prefix('+') {
        ("+=", Some(w))
    } else if op.is_empty() {
        ("", None)
    } else {
        return Err(format!(
            "`${{{inner}}}` is not a substitution the host can resolve"
        ));
    };
    if w.is_some_and(|w| w.contains('$')) {
        return Err(format!(
            "`${{{inner}}}` is nested; the host does not resolve it"
        ));
    }
    let value = lookup(vars, name)?;
    let set = value.is_some();
    let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
    let v = value.unwrap_or_default();
    Ok(match (modifier, w) {
        // `:-` and `-`: the word when the value is empty (`:-`) or unset.
        ("-", Some(w)) if !non_empty => w.to_string(),
        ("-=", Some(w)) if !set => w.to_string(),
        ("-" | "-=", Some(_)) => v,
        // `:+` and `+`: the word when the value is non-empty (`:+`) or set.
        ("+", Some(w)) if non_empty => w.to_string(),
        ("+=", Some(w)) if set => w.to_string(),
        ("+" | "+=", Some(_)) => String::new(),
        _ => v,
    })
}

/// `ARG A=1 B` → the declared names with what is known of their values
/// (a build arg overrides a default).
fn declare_args(
    args: &str,
    escape: char,
    vars: &mut HashMap<String, Var>,
    build_args: &HashMap<String, String>,
) {
    for decl in args.split_whitespace() {
        let (name, default) = match decl.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (decl, None),
        };
        let var = match (build_args.get(name), default) {
            (Some(v), _) => Var::Value(v.clone()),
            (None, Some(d)) => match expand(d, escape, vars) {
                Ok(v) => Var::Value(v),
                Err(why) => Var::Unknown(why),
            },
            (None, None) => Var::Unset,
        };
        vars.insert(name.to_string(), var);
    }
}

/// The external images `text` reads, given the build args of the request.
/// Stage references and `scratch` are not listed.
pub fn external_images(
    text: &str,
    build_args: &HashMap<String, String>,
) -> anyhow::Result<Vec<ImageUse>> {
    let escape = escape_char(text);
    // What FROM may use: the ARGs declared before the first FROM.
    let mut globals: HashMap<String, Var> = HashMap::new();
    let mut stages: Vec<Option<String>> = Vec::new();
    let mut out = Vec::new();
    let at = |n: usize, m: String| anyhow::anyhow!("Dockerfile line {n}: {m}");

    let lines = logical_lines(text, escape);
    for line in &lines {
        let Some((keyword, args)) = effective_instruction(line) else {
            continue;
        };
        match keyword {
            "ARG" if stages.is_empty() => declare_args(args, escape, &mut globals, build_args),
            "FROM" => {
                let (image, alias) =
                    from_image(args, escape, &globals, &stages).map_err(|e| at(line.number, e))?;
                out.extend(image.map(|image| ImageUse {
                    line: line.number,
                    instruction: "FROM",
                    image,
                }));
                stages.push(alias);
            }
            "COPY" | "RUN" => {
                let read = flag_images(keyword, args, &stages).map_err(|e| at(line.number, e))?;
                out.extend(read.into_iter().map(|(instruction, image)| ImageUse {
                    line: line.number,
                    instruction,
                    image,
                }));
            }
            _ => {}
        }
    }
    if stages.is_empty() {
        anyhow::bail!("the Dockerfile has no FROM");
    }
    Ok(out)
}

/// The instruction as it reads images: `ONBUILD COPY`/`ONBUILD RUN` count
/// as the trigger they carry (it runs in later builds); `None` for other
/// ONBUILD triggers.
fn effective_instruction(line: &Line) -> Option<(&str, &str)> {
    let (keyword, args) = (line.keyword.as_str(), line.args.as_str());
    if keyword != "ONBUILD" {
        return Some((keyword, args));
    }
    let (kw, rest) = args
        .split_once(|c: char| c.is_whitespace())
        .unwrap_or((args, ""));
    let kw = kw.to_ascii_uppercase();
    let keyword = match kw.as_str() {
        "COPY" => "COPY",
        "RUN" => "RUN",
        _ => return None,
    };
    Some((keyword, rest.trim()))
}

/// `FROM image [AS name]`: the external image (none for an earlier stage
/// or `scratch`) and the stage's alias.
fn from_image(
    args: &str,
    escape: char,
    globals: &HashMap<String, Var>,
    stages: &[Option<String>],
) -> Result<(Option<ImageRef>, Option<String>), String> {
    let (_, rest) = flags(args);
    let mut words = rest.split_whitespace();
    let image = words.next().unwrap_or("");
    let alias = match (words.next(), words.next(), words.next()) {
        (None, ..) => None,
        (Some(a), Some(name), None) if a.eq_ignore_ascii_case("as") => {
            Some(name.to_ascii_lowercase())
        }
        _ => return Err("FROM takes `image [AS name]`".into()),
    };
    let expanded = expand(image, escape, globals).map_err(|e| format!("FROM `{image}`: {e}"))?;
    let lower = expanded.to_ascii_lowercase();
    if stages.iter().any(|s| s.as_deref() == Some(lower.as_str())) {
        return Ok((None, alias));
    }
    if expanded.is_empty() {
        return Err(format!("FROM `{image}` names no image"));
    }
    let r = ImageRef::parse(&expanded).map_err(|e| format!("FROM: {e}"))?;
    Ok(((!r.is_scratch()).then_some(r), alias))
}

/// The external images a `COPY --from=` or `RUN --mount=…,from=` reads,
/// with the instruction named as messages and audits show it. Earlier
/// stages (by name or number) and `scratch` are not listed.
fn flag_images(
    keyword: &str,
    args: &str,
    stages: &[Option<String>],
) -> Result<Vec<(&'static str, ImageRef)>, String> {
    let mut out = Vec::new();
    let (fl, _) = flags(args);
    for (k, v) in fl {
        let (from, instruction) = match (keyword, k.as_str()) {
            ("COPY", "from") => (v, "COPY --from"),
            ("RUN", "mount") => match v.split(',').find_map(|kv| kv.trim().strip_prefix("from=")) {
                Some(f) => (f.to_string(), "RUN --mount from"),
                None => continue,
            },
            _ => continue,
        };
        if from.contains('$') {
            return Err(format!("{instruction}=`{from}`: a variable here cannot be checked before the build; name the stage or image"));
        }
        let lower = from.to_ascii_lowercase();
        if let Ok(n) = lower.parse::<usize>() {
            if n < stages.len() {
                continue;
            }
            return Err(format!("{instruction}={from}: no such stage"));
        }
        if stages.iter().any(|s| s.as_deref() == Some(lower.as_str())) {
            continue;
        }
        let r = ImageRef::parse(&from).map_err(|e| format!("{instruction}: {e}"))?;
        if !r.is_scratch() {
            out.push((instruction, r));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(text: &str, args: &[(&str, &str)]) -> Result<Vec<String>, String> {
        let args = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        external_images(text, &args)
            .map(|v| {
                v.into_iter()
                    .map(|u| format!("{}:{}:{}", u.line, u.instruction, u.image))
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn stages_scratch_and_external_bases() {
        let text = "# syntax=docker/dockerfile:1\nFROM --platform=linux/amd64 local/base:1 AS build\nRUN make\nfrom build as test\nFROM scratch\nCOPY --from=build /a /a\nCOPY --from=0 /b /b\nCOPY --from=local/tools:2 /c /c\nCOPY --chown=1:1 x y\n";
        assert_eq!(
            images(text, &[]).unwrap(),
            ["2:FROM:local/base:1", "8:COPY --from:local/tools:2"]
        );
        assert_eq!(images("FROM scratch\n", &[]).unwrap(), Vec::<String>::new());
        // A stage name only counts after its FROM.
        assert_eq!(
            images("FROM later\nFROM scratch AS later\n", &[]).unwrap(),
            ["1:FROM:later"]
        );
        assert!(images("RUN x\n", &[]).is_err());
        assert!(images("FROM scratch\nCOPY --from=3 a b\n", &[]).is_err());
    }

    #[test]
    fn continuations_comments_case_and_escape() {
        let text = "FROM \\\n  # a comment inside\n\n  local/base:1 \\\n  AS b\nCoPy \\\n --from=evil/image / /\n";
        assert_eq!(
            images(text, &[]).unwrap(),
            ["1:FROM:local/base:1", "6:COPY --from:evil/image"]
        );
        let text = "# escape=`\nFROM local/base:1 `\n  AS b\nONBUILD COPY --from=evil/x a b\nRUN --mount=type=bind,from=evil/y,target=/y true\n";
        assert_eq!(
            images(text, &[]).unwrap(),
            [
                "2:FROM:local/base:1",
                "4:COPY --from:evil/x",
                "5:RUN --mount from:evil/y"
            ]
        );
    }

    #[test]
    fn args_are_substituted_or_refused() {
        let text =
            "ARG BASE=local/base\nARG TAG=1\nFROM ${BASE}:$TAG\nFROM \"${BASE}:${TAG:-2}\"\n";
        assert_eq!(
            images(text, &[]).unwrap(),
            ["3:FROM:local/base:1", "4:FROM:local/base:1"]
        );
        // A build arg overrides a declared ARG's default.
        assert_eq!(
            images(text, &[("BASE", "evil/image")]).unwrap(),
            ["3:FROM:evil/image:1", "4:FROM:evil/image:1"]
        );
        assert_eq!(
            images("ARG B\nFROM ${B:-local/x}\n", &[]).unwrap(),
            ["2:FROM:local/x"]
        );
        for (text, why) in [
            ("FROM $UNDECLARED\n", "not an ARG declared"),
            ("ARG B\nFROM $B\n", "names no image"),
            (
                "ARG TARGETARCH\nFROM local/x-$TARGETARCH\n",
                "set by the builder",
            ),
            ("FROM local/x-$TARGETARCH\n", "set by the builder"),
            (
                "FROM scratch\nARG LATE=evil\nFROM $LATE\n",
                "not an ARG declared",
            ),
            ("ARG A=${NOPE}\nFROM $A\n", "ARG `A`"),
            ("FROM ${B/x/y}\n", "not a substitution"),
            ("FROM scratch\nCOPY --from=$X a b\n", "cannot be checked"),
            ("FROM a b\n", "FROM takes"),
            ("FROM Local/X\n", "lower case"),
        ] {
            let e = images(text, &[]).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        // The builder's own variables, when passed, are known.
        assert_eq!(
            images(
                "ARG TARGETARCH\nFROM local/x-$TARGETARCH\n",
                &[("TARGETARCH", "amd64")]
            )
            .unwrap(),
            ["2:FROM:local/x-amd64"]
        );
    }
}
