//! Line-based editing of Kubernetes manifests (YAML), keeping every byte
//! but the changed values: indentation, quoting, comments, blank lines,
//! `---` document separators, CRLF line endings and a UTF-8 BOM.
//!
//! Two kinds of references are edited, only where their repository is the
//! one looked for (`match`, compared with [`reference::same_repository`]):
//!
//! - **`image:` keys** — `image: VALUE`, `- image: VALUE`, any indentation,
//!   VALUE plain, `"double-quoted"` or `'single-quoted'` (the quote style is
//!   kept; a plain value that YAML would read as a number or a boolean is
//!   written double-quoted), an optional ` # comment` kept. The whole value
//!   becomes the deployed reference.
//! - **Kustomize `images:` entries** — a block sequence under an `images:`
//!   key whose items have `name:` and optionally `newName:`, `newTag:`,
//!   `digest:`. An entry matches when its `newName` (else its `name`) is the
//!   repository; it is rewritten so that it yields exactly the deployed
//!   reference: `newTag`/`digest` replaced, added (a line after the entry's
//!   last key) or removed (a digest-only reference drops `newTag`, a tag-only
//!   one drops `digest`), `newName` set when the repository differs.
//!
//! Anything that mentions the repository under an `image` key but cannot be
//! edited safely line by line is refused with the line's number: flow style
//! (`{name: app, image: r/app:1}`), anchors, aliases and tags
//! (`&a`, `*a`, `!!str`), escapes in quoted values, values continued on the
//! next line, block scalars (`image: |`), and `image:` lines inside a
//! multi-line string (a ConfigMap embedding YAML), which are text, not a
//! manifest.

use std::collections::{BTreeMap, BTreeSet};

use crate::reference::{self, ImageRef};

/// What to put where.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    /// Repository whose references are replaced.
    pub repository: &'a str,
    /// The reference to deploy, as text and parsed.
    pub image: &'a str,
    pub parsed: &'a ImageRef,
}

/// A reference to the repository found in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// 1-based line (of the `image:` key, or of the Kustomize entry's `name`).
    pub line: u32,
    /// The reference it stood for before the edit.
    pub current: String,
}

/// One edited line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// 1-based line in the original file (for an added line: the line it
    /// follows).
    pub line: u32,
    /// `image: a → b`, `newTag: "1" → "2"`, `digest: removed`...
    pub what: String,
}

/// Result of editing one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edited {
    /// The new content (equal to the input when nothing changed).
    pub text: String,
    /// Every reference to the repository, edited or already at the image.
    pub found: Vec<Found>,
    pub changes: Vec<Change>,
    /// The first reference replaced that differs from the image.
    pub previous: Option<String>,
}

impl Edited {
    /// Whether the content changed.
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }
}

/// Something that mentions the repository but is not edited safely.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line.
    pub line: u32,
    pub message: String,
}

/// Edits `text`. `Err` lists every line refused (nothing is edited then).
pub fn edit(text: &str, target: &Target) -> Result<Edited, Vec<Problem>> {
    Editor::new(text, target).run()
}

// ---- lines -----------------------------------------------------------------

struct Line<'a> {
    /// Without the line ending.
    body: &'a str,
    /// `"\n"`, `"\r\n"` or `""` (last line without one).
    eol: &'a str,
}

fn split_lines(text: &str) -> Vec<Line<'_>> {
    text.split_inclusive('\n')
        .map(|l| {
            let body = l.strip_suffix('\n').unwrap_or(l);
            let (body, eol) = match body.strip_suffix('\r') {
                Some(b) if l.ends_with('\n') => (b, &l[b.len()..]),
                _ if l.ends_with('\n') => (body, "\n"),
                _ => (body, ""),
            };
            Line { body, eol }
        })
        .collect()
}

// ---- scalars and keys ------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    Plain,
    Double,
    Single,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Value<'a> {
    /// A one-line scalar; `start..end` is its content in the line (inside
    /// the quotes for quoted styles).
    Scalar {
        text: &'a str,
        start: usize,
        end: usize,
        style: Style,
    },
    /// Nothing after the colon (maybe a comment): a nested node follows.
    Empty,
    /// `|` or `>`: a multi-line string follows.
    Block,
    /// Anything else (flow collection, anchor, alias, tag, escapes...).
    Other { raw: &'a str, reason: &'static str },
}

/// Whether `rest` (after a scalar) is only blanks and maybe a comment.
fn only_comment(rest: &str) -> bool {
    let t = rest.trim_start_matches([' ', '\t']);
    t.is_empty() || (t.starts_with('#') && t.len() < rest.len())
}

/// The value starting at `at` in `line` (after `key:` or `- `).
fn parse_value(line: &str, at: usize) -> Value<'_> {
    let rest = &line[at..];
    let skip = rest.len() - rest.trim_start_matches([' ', '\t']).len();
    let start = at + skip;
    let v = &line[start..];
    let Some(first) = v.chars().next() else {
        return Value::Empty;
    };
    let other = |reason| Value::Other { raw: v, reason };
    match first {
        '#' => Value::Empty,
        '"' => double_quoted(v, start),
        '\'' => single_quoted(v, start),
        '|' | '>' => {
            let ind =
                v[1..].trim_start_matches(['+', '-', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
            if only_comment(ind) {
                Value::Block
            } else {
                other("an unreadable block scalar header")
            }
        }
        '{' | '[' => other("a flow-style collection"),
        '&' => other("an anchor (&)"),
        '*' => other("an alias (*)"),
        '!' => other("a tag (!)"),
        '%' | '@' | '`' | ',' => other("a reserved character at the start of a plain value"),
        _ => plain_value(v, start),
    }
}

/// `v` starts with `"`, at byte `start` of the line.
fn double_quoted(v: &str, start: usize) -> Value<'_> {
    let other = |reason| Value::Other { raw: v, reason };
    let inner = &v[1..];
    let Some(close) = inner.find('"') else {
        return other("a double-quoted value continued on the next line");
    };
    let text = &inner[..close];
    if text.contains('\\') {
        return other("escape sequences in a double-quoted value");
    }
    if !only_comment(&inner[close + 1..]) {
        return other("text after the closing quote");
    }
    Value::Scalar {
        text,
        start: start + 1,
        end: start + 1 + close,
        style: Style::Double,
    }
}

/// `v` starts with `'`, at byte `start` of the line.
fn single_quoted(v: &str, start: usize) -> Value<'_> {
    let other = |reason| Value::Other { raw: v, reason };
    let inner = &v[1..];
    let Some(close) = inner.find('\'') else {
        return other("a single-quoted value continued on the next line");
    };
    if inner[close + 1..].starts_with('\'') {
        return other("an escaped quote ('') in a single-quoted value");
    }
    if !only_comment(&inner[close + 1..]) {
        return other("text after the closing quote");
    }
    Value::Scalar {
        text: &inner[..close],
        start: start + 1,
        end: start + 1 + close,
        style: Style::Single,
    }
}

/// A plain scalar `v` at byte `start` of the line: it ends at ` #` (a
/// comment) or the end of line.
fn plain_value(v: &str, start: usize) -> Value<'_> {
    let bytes = v.as_bytes();
    let mut end = v.len();
    for i in 1..bytes.len() {
        if bytes[i] == b'#' && matches!(bytes[i - 1], b' ' | b'\t') {
            end = i;
            break;
        }
    }
    let text = v[..end].trim_end_matches([' ', '\t']);
    if text.contains(": ") || text.ends_with(':') {
        return Value::Other {
            raw: v,
            reason: "a mapping where a plain value was expected",
        };
    }
    Value::Scalar {
        text,
        start,
        end: start + text.len(),
        style: Style::Plain,
    }
}

/// `key: value` (after indentation and any `- `).
#[derive(Clone, Debug)]
struct KeyLine<'a> {
    key: &'a str,
    /// Column (bytes from the indentation start) of the key.
    col: usize,
    value: Value<'a>,
}

/// What a content line is.
#[derive(Clone, Debug)]
enum Node<'a> {
    Key(KeyLine<'a>),
    /// `- value` with no key (`- foo`, `- {..}`, `- |`); `col` is the column
    /// of the last `-`.
    Item {
        col: usize,
        value: Value<'a>,
    },
}

/// Parses the line from `at` (the first non-space), `base` being the byte
/// offset the columns count from.
fn parse_node(line: &str, at: usize, base: usize) -> Node<'_> {
    let mut pos = at;
    let mut dash = None;
    loop {
        let rest = &line[pos..];
        if rest == "-" || rest.starts_with("- ") || rest.starts_with("-\t") {
            dash = Some(pos);
            pos += 1;
            pos += line[pos..].len() - line[pos..].trim_start_matches([' ', '\t']).len();
        } else {
            break;
        }
    }
    let col = pos - base;
    let item = |value| Node::Item {
        col: dash.map_or(col, |d| d - base),
        value,
    };
    let rest = &line[pos..];
    // Quoted key.
    if let Some(q @ ('"' | '\'')) = rest.chars().next() {
        if let Some(close) = rest[1..].find(q) {
            let after = &rest[1 + close + 1..];
            let sp = after.len() - after.trim_start_matches([' ', '\t']).len();
            let after = &after[sp..];
            if let Some(a) = after.strip_prefix(':') {
                if a.is_empty() || a.starts_with([' ', '\t']) {
                    let value_at = pos + 1 + close + 1 + sp + 1;
                    return Node::Key(KeyLine {
                        key: &rest[1..1 + close],
                        col,
                        value: parse_value(line, value_at),
                    });
                }
            }
        }
        return item(parse_value(line, pos));
    }
    if rest.starts_with(['{', '[', '&', '*', '!', '|', '>', '#', '%', '@', '`', '?']) {
        return item(parse_value(line, pos));
    }
    // Plain key: up to the first `: ` / `:` at the end, before any ` #`.
    let bytes = rest.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'#' if i > 0 && matches!(bytes[i - 1], b' ' | b'\t') => break,
            b':' if i + 1 == bytes.len() || matches!(bytes[i + 1], b' ' | b'\t') => {
                let key = rest[..i].trim_end_matches([' ', '\t']);
                if key.is_empty() {
                    break;
                }
                return Node::Key(KeyLine {
                    key,
                    col,
                    value: parse_value(line, pos + i + 1),
                });
            }
            _ => {}
        }
    }
    item(parse_value(line, pos))
}

/// Text without a trailing ` # comment` (rough: for mention checks only).
fn strip_comment(s: &str) -> &str {
    let b = s.as_bytes();
    for i in 0..b.len() {
        if b[i] == b'#' && (i == 0 || matches!(b[i - 1], b' ' | b'\t')) {
            return &s[..i];
        }
    }
    s
}

/// Whether `text` contains a reference to `repository` (split on blanks,
/// quotes and flow punctuation).
fn mentions(text: &str, repository: &str) -> bool {
    strip_comment(text)
        .split(|c: char| c.is_whitespace() || "{}[],\"'\\".contains(c))
        .map(|t| t.trim_start_matches(['&', '*', '!']).trim_end_matches(':'))
        .filter(|t| !t.is_empty())
        .any(|t| {
            reference::parse(t)
                .is_some_and(|r| reference::same_repository(&r.repository, repository))
        })
}

/// Whether a flow collection has an `image` key.
fn has_image_key(text: &str) -> bool {
    let t = strip_comment(text);
    let b = t.as_bytes();
    let mut from = 0;
    while let Some(i) = t[from..].find("image") {
        let i = from + i;
        let before_ok = i == 0 || matches!(b[i - 1], b'{' | b',' | b' ' | b'\t' | b'"' | b'\'');
        let mut j = i + 5;
        if j < b.len() && matches!(b[j], b'"' | b'\'') {
            j += 1;
        }
        while j < b.len() && matches!(b[j], b' ' | b'\t') {
            j += 1;
        }
        if before_ok && j < b.len() && b[j] == b':' {
            return true;
        }
        from = i + 5;
    }
    false
}

/// `value` written where a value of `style` was: quotes kept, a plain
/// value YAML would not read as a string gets double quotes.
fn styled(value: &str, style: Style) -> String {
    if style == Style::Plain && reference::plain_needs_quotes(value) {
        format!("\"{value}\"")
    } else {
        value.to_string()
    }
}

/// A new plain-or-quoted scalar.
fn fresh(value: &str) -> String {
    styled(value, Style::Plain)
}

// ---- Kustomize `images:` ---------------------------------------------------

#[derive(Clone, Debug)]
struct Field<'a> {
    idx: usize,
    value: Value<'a>,
}

#[derive(Clone, Debug, Default)]
struct Entry<'a> {
    /// Column of the entry's keys (known from its first key line).
    col: Option<usize>,
    first_idx: usize,
    /// Last line holding one of its keys.
    last_idx: usize,
    name: Option<Field<'a>>,
    new_name: Option<Field<'a>>,
    new_tag: Option<Field<'a>>,
    digest: Option<Field<'a>>,
    duplicate: Option<(usize, &'a str)>,
}

impl<'a> Entry<'a> {
    fn slot(&mut self, key: &str) -> Option<&mut Option<Field<'a>>> {
        match key {
            "name" => Some(&mut self.name),
            "newName" => Some(&mut self.new_name),
            "newTag" => Some(&mut self.new_tag),
            "digest" => Some(&mut self.digest),
            _ => None,
        }
    }

    /// Records `key` if it is one of the entry's; false for other keys.
    fn set(&mut self, key: &'a str, idx: usize, value: Value<'a>) -> bool {
        let Some(slot) = self.slot(key) else {
            return false;
        };
        if slot.is_some() {
            let dup = Some((idx, key));
            self.duplicate = self.duplicate.or(dup);
        } else {
            *slot = Some(Field { idx, value });
        }
        self.last_idx = idx;
        true
    }
}

struct Images<'a> {
    /// Column of the `images:` key.
    key_col: usize,
    /// Column of the entries' `-` (from the first one).
    item_col: Option<usize>,
    entry: Option<Entry<'a>>,
}

// ---- the editor ------------------------------------------------------------

struct Editor<'a, 't> {
    lines: Vec<Line<'a>>,
    target: &'t Target<'t>,
    replaced: BTreeMap<usize, String>,
    removed: BTreeSet<usize>,
    inserted: BTreeMap<usize, Vec<String>>,
    found: Vec<Found>,
    changes: Vec<Change>,
    /// `(line index, old value)` of every replaced reference.
    replaced_values: Vec<(usize, String)>,
    problems: Vec<Problem>,
}

/// A multi-line string being skipped.
struct BlockScalar {
    col: usize,
    start: usize,
    /// `image: |` itself (vs. some other key's string holding `image:` lines).
    image_key: bool,
    reported: bool,
}

impl BlockScalar {
    /// The string of a key other than `image` (or of a list item).
    fn other(col: usize, start: usize) -> Self {
        BlockScalar {
            col,
            start,
            image_key: false,
            reported: false,
        }
    }
}

/// `---` or `...` (a document separator or end), maybe followed by text.
fn is_document_marker(trimmed: &str) -> bool {
    (trimmed.starts_with("---") || trimmed.starts_with("..."))
        && (trimmed.len() == 3 || trimmed[3..].starts_with([' ', '\t']))
}

impl<'a, 't> Editor<'a, 't> {
    fn new(text: &'a str, target: &'t Target<'t>) -> Self {
        Editor {
            lines: split_lines(text),
            target,
            replaced: BTreeMap::new(),
            removed: BTreeSet::new(),
            inserted: BTreeMap::new(),
            found: Vec::new(),
            changes: Vec::new(),
            replaced_values: Vec::new(),
            problems: Vec::new(),
        }
    }

    fn problem(&mut self, idx: usize, message: impl Into<String>) {
        self.problems.push(Problem {
            line: idx as u32 + 1,
            message: message.into(),
        });
    }

    fn mentions(&self, text: &str) -> bool {
        mentions(text, self.target.repository)
    }

    fn note_previous(&mut self, idx: usize, old: &str) {
        if old != self.target.image {
            self.replaced_values.push((idx, old.to_string()));
        }
    }

    fn run(mut self) -> Result<Edited, Vec<Problem>> {
        let mut block: Option<BlockScalar> = None;
        let mut pending: Option<(usize, usize)> = None;
        let mut images: Option<Images<'a>> = None;
        for idx in 0..self.lines.len() {
            let body = self.lines[idx].body;
            let base = if idx == 0 && body.starts_with('\u{feff}') {
                '\u{feff}'.len_utf8()
            } else {
                0
            };
            let content = &body[base..];
            let indent = content.len() - content.trim_start_matches(' ').len();
            let trimmed = &content[indent..];
            let blank = trimmed.trim().is_empty();

            if let Some(b) = &mut block {
                if blank || indent > b.col {
                    self.block_line(b, idx, body, base + indent, base);
                    continue;
                }
                block = None;
            }
            if blank || trimmed.starts_with('#') {
                continue;
            }
            if let Some((at, col)) = pending.take() {
                if indent > col {
                    self.check_continued(at, body, base + indent, base);
                }
            }
            if indent == 0 && is_document_marker(trimmed) {
                if let Some(i) = images.take() {
                    self.finish_images(i);
                }
                continue;
            }
            let node = parse_node(body, base + indent, base);
            if self.images_line(&mut images, idx, indent, trimmed, &node) {
                continue;
            }
            self.node_line(idx, node, &mut pending, &mut block, &mut images);
        }
        if let Some(i) = images.take() {
            self.finish_images(i);
        }
        self.finish()
    }

    /// A line inside a multi-line string: text, not a manifest, but an
    /// image in it is refused (it would not be edited).
    fn block_line(
        &mut self,
        b: &mut BlockScalar,
        idx: usize,
        body: &'a str,
        at: usize,
        base: usize,
    ) {
        let trimmed = &body[at..];
        if b.image_key {
            if !b.reported && self.mentions(trimmed) {
                b.reported = true;
                self.problem(
                    b.start,
                    "the image is a block scalar (| or >): write it on one line",
                );
            }
        } else if let Node::Key(k) = parse_node(body, at, base) {
            let value_text = match &k.value {
                Value::Scalar { text, .. } => text,
                Value::Other { raw, .. } => raw,
                _ => "",
            };
            if k.key == "image" && self.mentions(value_text) {
                let start = b.start + 1;
                self.problem(
                    idx,
                    format!(
                        "an `image:` line inside a multi-line string (the block scalar of line {start}) is text, not a manifest: not edited"
                    ),
                );
            }
        }
    }

    /// The more-indented line after an empty `image:` (line `image_idx`):
    /// a nested node is fine, a value continued from `image:` is refused.
    fn check_continued(&mut self, image_idx: usize, body: &'a str, at: usize, base: usize) {
        let trimmed = &body[at..];
        let node = parse_node(body, at, base);
        let nested = matches!(node, Node::Key(_)) || trimmed == "-" || trimmed.starts_with("- ");
        if !nested && self.mentions(trimmed) {
            self.problem(
                image_idx,
                "the image value continues on the next line: write it on one line",
            );
        }
    }

    /// A line while a Kustomize `images:` block is open: starts, fills or
    /// closes its entries. True when the line was an entry's and needs
    /// nothing more.
    fn images_line(
        &mut self,
        images: &mut Option<Images<'a>>,
        idx: usize,
        indent: usize,
        trimmed: &str,
        node: &Node<'a>,
    ) -> bool {
        let Some(im) = images.as_mut() else {
            return false;
        };
        let is_dash = trimmed == "-" || trimmed.starts_with("- ");
        let inside = indent > im.key_col || (is_dash && indent == im.key_col);
        if !inside || (im.item_col.is_none() && !is_dash) {
            let im = images.take().expect("checked");
            self.finish_images(im);
            return false;
        }
        if is_dash && im.item_col.is_none_or(|c| c == indent) {
            im.item_col = Some(indent);
            if let Some(e) = im.entry.take() {
                self.finish_entry(e);
            }
            let mut e = Entry {
                first_idx: idx,
                last_idx: idx,
                ..Entry::default()
            };
            return match node {
                Node::Key(k) => {
                    e.col = Some(k.col);
                    let consumed = e.set(k.key, idx, k.value.clone());
                    im.entry = Some(e);
                    consumed
                }
                Node::Item { value, .. } => {
                    if let Value::Other { raw, .. } = value {
                        if raw.starts_with('{') && self.mentions(raw) {
                            self.problem(
                                idx,
                                "a flow-style Kustomize images entry ({...}): write it as a block mapping",
                            );
                        }
                    }
                    if trimmed == "-" {
                        im.entry = Some(e);
                    }
                    true
                }
            };
        }
        if let (Some(e), Node::Key(k)) = (&mut im.entry, node) {
            if e.col.is_none() && indent > im.item_col.unwrap_or(im.key_col) {
                e.col = Some(indent);
            }
            return e.col == Some(indent) && e.set(k.key, idx, k.value.clone());
        }
        false
    }

    /// A line outside Kustomize entries: an `image:` key, the start of an
    /// `images:` block or of a block scalar, or flow style holding the image.
    fn node_line(
        &mut self,
        idx: usize,
        node: Node<'a>,
        pending: &mut Option<(usize, usize)>,
        block: &mut Option<BlockScalar>,
        images: &mut Option<Images<'a>>,
    ) {
        match node {
            Node::Key(k) => match (k.key, &k.value) {
                ("image", _) => self.image_line(idx, &k, pending, block),
                ("images", Value::Empty) => {
                    if let Some(i) = images.take() {
                        self.finish_images(i);
                    }
                    *images = Some(Images {
                        key_col: k.col,
                        item_col: None,
                        entry: None,
                    });
                }
                (_, Value::Block) => *block = Some(BlockScalar::other(k.col, idx)),
                (key, Value::Other { raw, reason })
                    if (key == "images" || has_image_key(raw)) && self.mentions(raw) =>
                {
                    self.problem(
                        idx,
                        format!(
                            "`{key}:` holds {reason} with the image: only block style is edited"
                        ),
                    );
                }
                _ => {}
            },
            Node::Item { col, value } => match value {
                Value::Block => *block = Some(BlockScalar::other(col, idx)),
                Value::Other { raw, .. } if has_image_key(raw) && self.mentions(raw) => {
                    self.problem(
                        idx,
                        "a flow-style mapping ({...}) with the image: write it in block style",
                    );
                }
                _ => {}
            },
        }
    }

    /// Every problem, or the edited text with what was found and changed.
    fn finish(mut self) -> Result<Edited, Vec<Problem>> {
        if !self.problems.is_empty() {
            self.problems.sort_by_key(|p| p.line);
            return Err(self.problems);
        }
        let text = self.render();
        // Kustomize entries are finished after the lines that follow them.
        self.found.sort_by_key(|f| f.line);
        self.changes.sort_by_key(|c| c.line);
        self.replaced_values.sort_by_key(|(idx, _)| *idx);
        Ok(Edited {
            text,
            found: self.found,
            changes: self.changes,
            previous: self.replaced_values.into_iter().next().map(|(_, v)| v),
        })
    }

    fn image_line(
        &mut self,
        idx: usize,
        k: &KeyLine<'a>,
        pending: &mut Option<(usize, usize)>,
        block: &mut Option<BlockScalar>,
    ) {
        match &k.value {
            Value::Scalar {
                text,
                start,
                end,
                style,
            } => {
                let Some(r) = reference::parse(text) else {
                    if self.mentions(text) {
                        self.problem(idx, format!("`image: {text}` is not an image reference"));
                    }
                    return;
                };
                if !reference::same_repository(&r.repository, self.target.repository) {
                    return;
                }
                self.found.push(Found {
                    line: idx as u32 + 1,
                    current: text.to_string(),
                });
                if *text == self.target.image {
                    return;
                }
                let body = self.lines[idx].body;
                let new = format!(
                    "{}{}{}",
                    &body[..*start],
                    styled(self.target.image, *style),
                    &body[*end..]
                );
                self.replaced.insert(idx, new);
                self.note_previous(idx, text);
                self.changes.push(Change {
                    line: idx as u32 + 1,
                    what: format!("image: {text} → {}", self.target.image),
                });
            }
            Value::Empty => *pending = Some((idx, k.col)),
            Value::Block => {
                *block = Some(BlockScalar {
                    col: k.col,
                    start: idx,
                    image_key: true,
                    reported: false,
                })
            }
            Value::Other { raw, reason } => {
                if self.mentions(raw) {
                    self.problem(
                        idx,
                        format!("the image value is {reason}: only a plain or quoted one-line value is edited"),
                    );
                }
            }
        }
    }

    fn finish_images(&mut self, mut im: Images<'a>) {
        if let Some(e) = im.entry.take() {
            self.finish_entry(e);
        }
    }

    /// Text of a Kustomize field, or a problem when it is not a one-line scalar.
    fn field_text(&mut self, f: &Option<Field<'a>>, key: &str) -> Result<Option<&'a str>, ()> {
        match f {
            None => Ok(None),
            Some(Field {
                value: Value::Scalar { text, .. },
                ..
            }) => Ok(Some(text)),
            Some(Field { idx, .. }) => {
                self.problem(
                    *idx,
                    format!(
                        "Kustomize images entry: `{key}` is not a one-line plain or quoted value"
                    ),
                );
                Err(())
            }
        }
    }

    fn finish_entry(&mut self, e: Entry<'a>) {
        let Some(name_field) = &e.name else {
            return;
        };
        let Some(name) = self.entry_name(name_field) else {
            return;
        };
        let Some(new_name) = self.entry_new_name(&e.new_name, name) else {
            return;
        };
        let effective = new_name.unwrap_or(name);
        if !reference::same_repository(effective, self.target.repository) {
            return;
        }
        if let Some((idx, key)) = e.duplicate {
            self.problem(idx, format!("Kustomize images entry: `{key}` given twice"));
            return;
        }
        let (Ok(tag), Ok(digest)) = (
            self.field_text(&e.new_tag, "newTag"),
            self.field_text(&e.digest, "digest"),
        ) else {
            return;
        };
        let current = ImageRef {
            repository: effective.to_string(),
            tag: tag.map(str::to_string),
            digest: digest.map(str::to_string),
        }
        .to_text();
        self.found.push(Found {
            line: name_field.idx as u32 + 1,
            current: current.clone(),
        });
        if self.retarget_entry(&e, effective) {
            self.note_previous(name_field.idx, &current);
        }
    }

    /// An entry's `name`, or `None` (with a problem when it is not a
    /// one-line scalar yet mentions the repository).
    fn entry_name(&mut self, f: &Field<'a>) -> Option<&'a str> {
        match &f.value {
            Value::Scalar { text, .. } => Some(*text),
            Value::Other { raw, .. } => {
                if self.mentions(raw) {
                    self.problem(
                        f.idx,
                        "Kustomize images entry: `name` is not a one-line plain or quoted value",
                    );
                }
                None
            }
            _ => None,
        }
    }

    /// An entry's `newName` (`Some(None)` when absent), or `None` when it is
    /// not a one-line scalar (a problem if the entry may be the image's).
    fn entry_new_name(&mut self, f: &Option<Field<'a>>, name: &str) -> Option<Option<&'a str>> {
        match f {
            None => Some(None),
            Some(Field {
                value: Value::Scalar { text, .. },
                ..
            }) => Some(Some(*text)),
            Some(Field { idx, value }) => {
                let raw = match value {
                    Value::Other { raw, .. } => raw,
                    _ => "",
                };
                if self.mentions(raw) || reference::same_repository(name, self.target.repository) {
                    self.problem(
                        *idx,
                        "Kustomize images entry: `newName` is not a one-line plain or quoted value",
                    );
                }
                None
            }
        }
    }

    /// Rewrites an entry of `effective` so it yields the target: fields
    /// replaced, removed or added. True when anything changed.
    fn retarget_entry(&mut self, e: &Entry<'a>, effective: &str) -> bool {
        let want = self.target.parsed.clone();
        let mut changed = false;
        let mut adds: Vec<(String, String)> = Vec::new();
        if want.repository != effective {
            match &e.new_name {
                Some(f) => changed |= self.set_field(f, "newName", &want.repository),
                None => adds.push(("newName".into(), want.repository.clone())),
            }
        }
        for (key, field, wanted) in [
            ("newTag", &e.new_tag, &want.tag),
            ("digest", &e.digest, &want.digest),
        ] {
            match (field, wanted) {
                (Some(f), Some(w)) => changed |= self.set_field(f, key, w),
                (None, Some(w)) => adds.push((key.into(), w.clone())),
                (Some(f), None) => {
                    self.remove_field(f, key);
                    changed = true;
                }
                (None, None) => {}
            }
        }
        if !adds.is_empty() {
            self.add_fields(e, adds);
            changed = true;
        }
        changed
    }

    fn remove_field(&mut self, f: &Field<'a>, key: &str) {
        self.removed.insert(f.idx);
        let old = match &f.value {
            Value::Scalar { text, .. } => *text,
            _ => "",
        };
        self.changes.push(Change {
            line: f.idx as u32 + 1,
            what: format!("{key}: {old} removed"),
        });
    }

    /// New `key: value` lines after the entry's last key, at its column.
    fn add_fields(&mut self, e: &Entry<'a>, adds: Vec<(String, String)>) {
        let after = e.last_idx.max(e.first_idx);
        let pad = " ".repeat(e.col.unwrap_or(0));
        for (key, value) in adds {
            self.inserted
                .entry(after)
                .or_default()
                .push(format!("{pad}{key}: {}", fresh(&value)));
            self.changes.push(Change {
                line: after as u32 + 1,
                what: format!("{key}: {value} added"),
            });
        }
    }

    /// Replaces a field's value; false when it already is `value`.
    fn set_field(&mut self, f: &Field<'a>, key: &str, value: &str) -> bool {
        let Value::Scalar {
            text,
            start,
            end,
            style,
        } = f.value
        else {
            return false;
        };
        if text == value {
            return false;
        }
        let body = self.lines[f.idx].body;
        self.replaced.insert(
            f.idx,
            format!("{}{}{}", &body[..start], styled(value, style), &body[end..]),
        );
        self.changes.push(Change {
            line: f.idx as u32 + 1,
            what: format!("{key}: {text} → {value}"),
        });
        true
    }

    fn render(&self) -> String {
        let default_eol = self
            .lines
            .iter()
            .map(|l| l.eol)
            .find(|e| !e.is_empty())
            .unwrap_or("\n");
        let mut out = String::new();
        for (idx, line) in self.lines.iter().enumerate() {
            let adds = self.inserted.get(&idx);
            if !self.removed.contains(&idx) {
                match self.replaced.get(&idx) {
                    Some(b) => out.push_str(b),
                    None => out.push_str(line.body),
                }
                let eol = if line.eol.is_empty() && adds.is_some() {
                    default_eol
                } else {
                    line.eol
                };
                out.push_str(eol);
            }
            if let Some(adds) = adds {
                let eol = if line.eol.is_empty() {
                    default_eol
                } else {
                    line.eol
                };
                let n = adds.len();
                for (i, a) in adds.iter().enumerate() {
                    out.push_str(a);
                    // The file's last line keeps having no line ending.
                    if !(line.eol.is_empty() && i + 1 == n && idx + 1 == self.lines.len()) {
                        out.push_str(eol);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
