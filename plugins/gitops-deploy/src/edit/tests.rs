//! The editor on real-looking manifests: exactly the value changes.

use super::*;

const REPO: &str = "127.0.0.1:5000/app";
const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn try_edit_as(text: &str, repository: &str, image: &str) -> Result<Edited, Vec<Problem>> {
    let parsed = reference::parse(image).expect("test image parses");
    edit(
        text,
        &Target {
            repository,
            image,
            parsed: &parsed,
        },
    )
}

fn edit_as(text: &str, repository: &str, image: &str) -> Edited {
    try_edit_as(text, repository, image).unwrap_or_else(|p| panic!("refused: {p:?}"))
}

fn ed(text: &str, image: &str) -> Edited {
    edit_as(text, REPO, image)
}

fn problems(text: &str, image: &str) -> Vec<Problem> {
    match try_edit_as(text, REPO, image) {
        Ok(e) => panic!("expected a refusal, got {e:?}"),
        Err(p) => p,
    }
}

/// `(line, old, new)` of the lines that differ (same line count).
fn diff(old: &str, new: &str) -> Vec<(usize, String, String)> {
    let a: Vec<&str> = old.split_inclusive('\n').collect();
    let b: Vec<&str> = new.split_inclusive('\n').collect();
    assert_eq!(a.len(), b.len(), "line count changed:\n{old}\n---\n{new}");
    a.iter()
        .zip(&b)
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| (i + 1, x.to_string(), y.to_string()))
        .collect()
}

const DEPLOYMENT: &str = r#"# Demo app, dev overlay.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: demo   # the app
  labels:
    app.kubernetes.io/name: demo
    example.com/image: 127.0.0.1:5000/app:0.9
spec:
  replicas: 2
  template:
    spec:
      initContainers:
        - name: migrate
          image: "127.0.0.1:5000/app:1.0"   # same image, runs migrations
      containers:
        - name: app
          image: 127.0.0.1:5000/app:1.0 # bumped by the pipeline
          ports:
            - containerPort: 8080
        - image: '127.0.0.1:5000/app-worker:1.0'
          name: worker
        - name: proxy
          image: envoyproxy/envoy:v1.31
        # - image: 127.0.0.1:5000/app:0.1 (old, commented out)
---
apiVersion: batch/v1
kind: Job
metadata: {name: seed}
spec:
  template:
    spec:
      containers:
      - image: 127.0.0.1:5000/app
        name: seed
"#;

#[test]
fn replaces_only_the_values_of_the_repository() {
    let image = format!("127.0.0.1:5000/app@{D1}");
    let e = ed(DEPLOYMENT, &image);
    assert_eq!(
        diff(DEPLOYMENT, &e.text),
        vec![
            (
                15,
                "          image: \"127.0.0.1:5000/app:1.0\"   # same image, runs migrations\n"
                    .to_string(),
                format!("          image: \"{image}\"   # same image, runs migrations\n"),
            ),
            (
                18,
                "          image: 127.0.0.1:5000/app:1.0 # bumped by the pipeline\n".to_string(),
                format!("          image: {image} # bumped by the pipeline\n"),
            ),
            (
                34,
                "      - image: 127.0.0.1:5000/app\n".to_string(),
                format!("      - image: {image}\n"),
            ),
        ]
    );
    assert_eq!(
        e.found,
        vec![
            Found {
                line: 15,
                current: "127.0.0.1:5000/app:1.0".into()
            },
            Found {
                line: 18,
                current: "127.0.0.1:5000/app:1.0".into()
            },
            Found {
                line: 34,
                current: "127.0.0.1:5000/app".into()
            },
        ]
    );
    assert_eq!(e.previous.as_deref(), Some("127.0.0.1:5000/app:1.0"));
    assert_eq!(e.changes.len(), 3);
    assert_eq!(
        e.changes[0],
        Change {
            line: 15,
            what: format!("image: 127.0.0.1:5000/app:1.0 → {image}")
        }
    );
    assert!(e.changed());
}

#[test]
fn already_at_the_image_changes_nothing() {
    let once = ed(DEPLOYMENT, "127.0.0.1:5000/app:2.0");
    let twice = ed(&once.text, "127.0.0.1:5000/app:2.0");
    assert!(!twice.changed());
    assert_eq!(twice.text, once.text);
    assert_eq!(twice.found.len(), 3);
    assert_eq!(twice.previous, None);
}

#[test]
fn previous_is_the_first_distinct_old_value() {
    let text = "a:\n  image: 127.0.0.1:5000/app:2\nb:\n  image: 127.0.0.1:5000/app:1\nc:\n  image: 127.0.0.1:5000/app:3\n";
    let e = ed(text, "127.0.0.1:5000/app:2");
    assert_eq!(e.previous.as_deref(), Some("127.0.0.1:5000/app:1"));
    assert_eq!(
        e.changes.iter().map(|c| c.line).collect::<Vec<_>>(),
        vec![4, 6]
    );
}

#[test]
fn nothing_found_for_another_repository() {
    let e = edit_as(DEPLOYMENT, "127.0.0.1:5000/other", "127.0.0.1:5000/other:1");
    assert!(e.found.is_empty());
    assert!(!e.changed());
    assert_eq!(e.text, DEPLOYMENT);
}

#[test]
fn crlf_bom_and_no_final_newline_are_kept() {
    let text = "\u{feff}image: 127.0.0.1:5000/app:1\r\nspec:\r\n  - image: '127.0.0.1:5000/app:1'  # c\r\n  - image: \"127.0.0.1:5000/app:1\"";
    let e = ed(text, "127.0.0.1:5000/app:2");
    assert_eq!(
        e.text,
        "\u{feff}image: 127.0.0.1:5000/app:2\r\nspec:\r\n  - image: '127.0.0.1:5000/app:2'  # c\r\n  - image: \"127.0.0.1:5000/app:2\""
    );
    assert_eq!(e.found.len(), 3);
}

#[test]
fn lone_cr_and_trailing_blanks() {
    let text =
        "image: 127.0.0.1:5000/app:1   \n\n\n  image:   127.0.0.1:5000/app:1\t# tab comment\n";
    let e = ed(text, "127.0.0.1:5000/app:2");
    assert_eq!(
        e.text,
        "image: 127.0.0.1:5000/app:2   \n\n\n  image:   127.0.0.1:5000/app:2\t# tab comment\n"
    );
}

#[test]
fn other_spellings_of_an_image_key() {
    let text = "- - image: 127.0.0.1:5000/app:1\n\"image\": 127.0.0.1:5000/app:1\n'image' : 127.0.0.1:5000/app:1\nimage : 127.0.0.1:5000/app:1\nimages: 127.0.0.1:5000/app:1\nmyimage: 127.0.0.1:5000/app:1\n";
    let e = ed(text, "127.0.0.1:5000/app:2");
    assert_eq!(
        diff(text, &e.text).iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
}

#[test]
fn docker_hub_short_names_match() {
    let text = "a:\n  image: nginx:1.26\nb:\n  image: docker.io/library/nginx:1.25\nc:\n  image: index.docker.io/library/nginx\nd:\n  image: nginx-unprivileged:1\n";
    let e = edit_as(text, "nginx", "nginx:1.27");
    assert_eq!(
        e.text,
        "a:\n  image: nginx:1.27\nb:\n  image: nginx:1.27\nc:\n  image: nginx:1.27\nd:\n  image: nginx-unprivileged:1\n"
    );
    assert_eq!(e.previous.as_deref(), Some("nginx:1.26"));
}

#[test]
fn explicit_match_moves_to_another_registry() {
    let text = "image: old.registry/app:1\nimage: 127.0.0.1:5000/app:1\n";
    let e = edit_as(text, "old.registry/app", "127.0.0.1:5000/app:2");
    assert_eq!(
        e.text,
        "image: 127.0.0.1:5000/app:2\nimage: 127.0.0.1:5000/app:1\n"
    );
}

#[test]
fn a_plain_value_that_would_not_be_a_string_gets_quotes() {
    // A repository named only with digits: YAML would read `1234` as a number.
    let e = edit_as("image: 1234:1\nimage: \"1234:1\"\n", "1234", "1234");
    assert_eq!(e.text, "image: \"1234\"\nimage: \"1234\"\n");
}

#[test]
fn flow_style_and_other_unsafe_forms_are_refused() {
    let cases: &[(&str, u32, &str)] = &[
        ("spec: {image: 127.0.0.1:5000/app:1}\n", 1, "flow-style"),
        (
            "containers: [{name: app, image: \"127.0.0.1:5000/app:1\"}]\n",
            1,
            "flow-style",
        ),
        (
            "containers:\n  - {name: app, image: 127.0.0.1:5000/app:1}\n",
            2,
            "flow-style",
        ),
        (
            "containers: [{name: app,\n    image: 127.0.0.1:5000/app:1}]\n",
            2,
            "not an image reference",
        ),
        ("image: &img 127.0.0.1:5000/app:1\n", 1, "anchor"),
        ("image: !!str 127.0.0.1:5000/app:1\n", 1, "tag"),
        ("image: \"127.0.0.1:5000/app:1\\n\"\n", 1, "escape"),
        ("image: '127.0.0.1:5000/app:1''x'\n", 1, "escaped quote"),
        (
            "image: \"127.0.0.1:5000/app:1\" extra\n",
            1,
            "after the closing quote",
        ),
        ("image: \"127.0.0.1:5000/app:1\n  \"\n", 1, "continued"),
        (
            "image: |\n  127.0.0.1:5000/app:1\nnext: 1\n",
            1,
            "block scalar",
        ),
        ("image: >-\n  127.0.0.1:5000/app:1\n", 1, "block scalar"),
        ("image:\n  127.0.0.1:5000/app:1\n", 1, "next line"),
        (
            "image: 127.0.0.1:5000/app:{{ .Values.tag }}\n",
            1,
            "not an image reference",
        ),
        (
            "data:\n  values.yaml: |\n    image: 127.0.0.1:5000/app:1\n    replicas: 1\n",
            3,
            "multi-line string (the block scalar of line 2)",
        ),
        (
            "args:\n  - |\n    image: 127.0.0.1:5000/app:1\n",
            3,
            "multi-line string",
        ),
        (
            "\"image\": \"127.0.0.1:5000/app:1\",\n",
            1,
            "after the closing quote",
        ),
    ];
    for (text, line, what) in cases {
        let p = problems(text, "127.0.0.1:5000/app:2");
        assert_eq!(p.len(), 1, "{text:?}: {p:?}");
        assert_eq!(p[0].line, *line, "{text:?}: {p:?}");
        assert!(p[0].message.contains(what), "{text:?}: {p:?}");
    }
}

#[test]
fn unsafe_forms_of_other_images_are_left_alone() {
    let text = "spec: {image: 127.0.0.1:5000/other:1}\nimage: &x 127.0.0.1:5000/other:1\ndata:\n  cfg: |\n    image: 127.0.0.1:5000/other:1\n    image: {{ .Values.app }}\n  script: |\n    docker pull 127.0.0.1:5000/app:1\nimage:\n  repository: 127.0.0.1:5000/app\n  tag: \"1\"\n";
    let e = ed(text, "127.0.0.1:5000/app:2");
    assert!(e.found.is_empty());
    assert_eq!(e.text, text);
}

#[test]
fn a_block_scalar_ends_at_a_less_indented_line() {
    let text =
        "data:\n  a: |\n    image: 127.0.0.1:5000/other:1\n\n  image: 127.0.0.1:5000/app:1\n";
    let e = ed(text, "127.0.0.1:5000/app:2");
    assert_eq!(
        e.changes.iter().map(|c| c.line).collect::<Vec<_>>(),
        vec![5]
    );
}

#[test]
fn every_refusal_is_listed_and_nothing_is_edited() {
    let text = "image: &a 127.0.0.1:5000/app:1\nimage: 127.0.0.1:5000/app:1\nx: {image: 127.0.0.1:5000/app:1}\n";
    let p = problems(text, "127.0.0.1:5000/app:2");
    assert_eq!(p.iter().map(|p| p.line).collect::<Vec<_>>(), vec![1, 3]);
}

// ---- Kustomize -------------------------------------------------------------

const KUSTOMIZATION: &str = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../../base\n\nimages:\n  # the app\n  - name: 127.0.0.1:5000/app\n    newTag: \"1.0\"   # pinned by the pipeline\n  - name: postgres\n    newTag: \"16\"\n\npatches:\n  - path: replicas.yaml\n";

#[test]
fn kustomize_new_tag_is_replaced_in_its_quotes() {
    let e = ed(KUSTOMIZATION, "127.0.0.1:5000/app:1.1");
    assert_eq!(
        diff(KUSTOMIZATION, &e.text),
        vec![(
            9,
            "    newTag: \"1.0\"   # pinned by the pipeline\n".to_string(),
            "    newTag: \"1.1\"   # pinned by the pipeline\n".to_string()
        )]
    );
    assert_eq!(
        e.found,
        vec![Found {
            line: 8,
            current: "127.0.0.1:5000/app:1.0".into()
        }]
    );
    assert_eq!(e.previous.as_deref(), Some("127.0.0.1:5000/app:1.0"));
    assert!(!ed(&e.text, "127.0.0.1:5000/app:1.1").changed());
}

#[test]
fn kustomize_plain_tag_that_looks_like_a_number_gets_quotes() {
    let text = "images:\n- name: 127.0.0.1:5000/app\n  newTag: v1\n";
    let e = ed(text, "127.0.0.1:5000/app:1.10");
    assert_eq!(
        e.text,
        "images:\n- name: 127.0.0.1:5000/app\n  newTag: \"1.10\"\n"
    );
}

#[test]
fn kustomize_tag_to_digest_and_back() {
    let image = format!("127.0.0.1:5000/app@{D1}");
    let e = ed(KUSTOMIZATION, &image);
    let want = KUSTOMIZATION.replace(
        "    newTag: \"1.0\"   # pinned by the pipeline\n",
        &format!("    digest: {D1}\n"),
    );
    assert_eq!(e.text, want);
    assert_eq!(e.previous.as_deref(), Some("127.0.0.1:5000/app:1.0"));
    assert_eq!(
        e.changes,
        vec![
            Change {
                line: 9,
                what: "newTag: 1.0 removed".into()
            },
            Change {
                line: 9,
                what: format!("digest: {D1} added")
            },
        ]
    );
    // Digest to digest: replaced in place.
    let e2 = ed(&e.text, &format!("127.0.0.1:5000/app@{D2}"));
    assert_eq!(diff(&e.text, &e2.text).len(), 1);
    assert_eq!(e2.previous, Some(image.clone()));
    // The rollback (previous-image) gives the original file back but for
    // the quotes and comment of the removed line.
    let back = ed(&e.text, "127.0.0.1:5000/app:1.0");
    assert_eq!(
        back.text,
        KUSTOMIZATION.replace(
            "    newTag: \"1.0\"   # pinned by the pipeline\n",
            "    newTag: \"1.0\"\n"
        )
    );
}

#[test]
fn kustomize_entry_without_tag_gets_one_after_its_last_key() {
    let text = "images:\n  - name: 127.0.0.1:5000/app # app\n    # note\n  - name: other\n";
    let e = ed(text, &format!("127.0.0.1:5000/app:2@{D1}"));
    assert_eq!(
        e.text,
        format!("images:\n  - name: 127.0.0.1:5000/app # app\n    newTag: \"2\"\n    digest: {D1}\n    # note\n  - name: other\n")
    );
    assert_eq!(e.previous.as_deref(), Some("127.0.0.1:5000/app"));
}

#[test]
fn kustomize_new_name_decides_the_match() {
    let text = "images:\n- name: app\n  newName: 127.0.0.1:5000/app\n  newTag: \"1\"\n- name: 127.0.0.1:5000/app\n  newName: elsewhere/app\n  newTag: \"1\"\n";
    let e = ed(text, "127.0.0.1:5000/app:2");
    assert_eq!(
        e.text,
        "images:\n- name: app\n  newName: 127.0.0.1:5000/app\n  newTag: \"2\"\n- name: 127.0.0.1:5000/app\n  newName: elsewhere/app\n  newTag: \"1\"\n"
    );
}

#[test]
fn kustomize_new_name_is_set_when_the_repository_changes() {
    // match = the name in the base; the deployed image is in our registry.
    let text = "images:\n- name: app\n  newTag: \"1\"\n";
    let e = edit_as(text, "app", "127.0.0.1:5000/app:2");
    assert_eq!(
        e.text,
        "images:\n- name: app\n  newTag: \"2\"\n  newName: 127.0.0.1:5000/app\n"
    );
    let text = "images:\n- name: app\n  newName: old.io/app\n  newTag: \"1\"\n";
    let e = edit_as(text, "old.io/app", "127.0.0.1:5000/app:2");
    assert_eq!(
        e.text,
        "images:\n- name: app\n  newName: 127.0.0.1:5000/app\n  newTag: \"2\"\n"
    );
}

#[test]
fn kustomize_with_crlf_and_no_final_newline() {
    let text = "images:\r\n- name: 127.0.0.1:5000/app\r\n  newTag: \"1\"";
    let e = ed(text, &format!("127.0.0.1:5000/app:1@{D1}"));
    assert_eq!(
        e.text,
        format!("images:\r\n- name: 127.0.0.1:5000/app\r\n  newTag: \"1\"\r\n  digest: {D1}")
    );
    let e = ed(text, &format!("127.0.0.1:5000/app@{D1}"));
    assert_eq!(
        e.text,
        format!("images:\r\n- name: 127.0.0.1:5000/app\r\n  digest: {D1}")
    );
}

#[test]
fn kustomize_keys_in_any_order_and_dash_on_its_own_line() {
    let text = "images:\n  - newTag: \"1\"\n    name: 127.0.0.1:5000/app\n  -\n    name: 127.0.0.1:5000/app\n    digest: sha256:1111111111111111111111111111111111111111111111111111111111111111\n";
    let e = ed(text, "127.0.0.1:5000/app:3");
    assert_eq!(
        e.text,
        "images:\n  - newTag: \"3\"\n    name: 127.0.0.1:5000/app\n  -\n    name: 127.0.0.1:5000/app\n    newTag: \"3\"\n"
    );
    assert_eq!(e.found.len(), 2);
}

#[test]
fn kustomize_block_ends_where_the_indentation_does() {
    let text = "images:\n- name: 127.0.0.1:5000/app\n  newTag: \"1\"\nnewTag: \"x\"\nspec:\n  image: 127.0.0.1:5000/app:1\n";
    let e = ed(text, "127.0.0.1:5000/app:2");
    assert_eq!(
        e.text,
        "images:\n- name: 127.0.0.1:5000/app\n  newTag: \"2\"\nnewTag: \"x\"\nspec:\n  image: 127.0.0.1:5000/app:2\n"
    );
}

#[test]
fn kustomize_unsafe_entries_are_refused() {
    let p = problems(
        "images:\n- {name: 127.0.0.1:5000/app, newTag: \"1\"}\n",
        "127.0.0.1:5000/app:2",
    );
    assert_eq!(p[0].line, 2);
    assert!(p[0].message.contains("flow-style Kustomize"), "{p:?}");
    let p = problems(
        "images: [{name: 127.0.0.1:5000/app, newTag: \"1\"}]\n",
        "127.0.0.1:5000/app:2",
    );
    assert!(p[0].message.contains("`images:`"), "{p:?}");
    let p = problems(
        "images:\n- name: 127.0.0.1:5000/app\n  newTag: \"1\"\n  newTag: \"2\"\n",
        "127.0.0.1:5000/app:2",
    );
    assert_eq!(p[0].line, 4);
    assert!(p[0].message.contains("given twice"), "{p:?}");
    let p = problems(
        "images:\n- name: 127.0.0.1:5000/app\n  newTag: &t \"1\"\n",
        "127.0.0.1:5000/app:2",
    );
    assert_eq!(p[0].line, 3);
    assert!(p[0].message.contains("`newTag`"), "{p:?}");
}

#[test]
fn images_that_are_not_kustomize_entries_are_ordinary_yaml() {
    // A list under some other `images:` key whose items are `image:` keys.
    let text = "images:\n  - image: 127.0.0.1:5000/app:1\n    pull: always\nimages2:\n  app: 127.0.0.1:5000/app:1\n";
    let e = ed(text, "127.0.0.1:5000/app:2");
    assert_eq!(
        e.text,
        "images:\n  - image: 127.0.0.1:5000/app:2\n    pull: always\nimages2:\n  app: 127.0.0.1:5000/app:1\n"
    );
}

#[test]
fn multi_document_files() {
    let text = "images:\n- name: 127.0.0.1:5000/app\n  newTag: \"1\"\n---\nimage: 127.0.0.1:5000/app:1\n...\n---\n- image: 127.0.0.1:5000/app:1\n";
    let e = ed(text, "127.0.0.1:5000/app:2");
    assert_eq!(
        e.text,
        text.replace(":1\n", ":2\n").replace("\"1\"", "\"2\"")
    );
    assert_eq!(e.found.len(), 3);
}

#[test]
fn split_lines_keeps_every_byte() {
    for text in ["", "a", "a\n", "a\r\nb", "a\r\n\r\n", "\r", "a\rb\n"] {
        let joined: String = split_lines(text)
            .iter()
            .map(|l| format!("{}{}", l.body, l.eol))
            .collect();
        assert_eq!(joined, text);
    }
}

#[test]
fn parse_value_forms() {
    fn v(s: &str) -> Value<'_> {
        parse_value(s, 0)
    }
    assert!(matches!(
        v(" a:1 # c"),
        Value::Scalar {
            text: "a:1",
            style: Style::Plain,
            ..
        }
    ));
    assert!(matches!(
        v(" 'a:1'"),
        Value::Scalar {
            text: "a:1",
            style: Style::Single,
            ..
        }
    ));
    assert!(matches!(
        v(" \"a:1\" # c"),
        Value::Scalar {
            text: "a:1",
            style: Style::Double,
            ..
        }
    ));
    assert!(matches!(v(" a#b"), Value::Scalar { text: "a#b", .. }));
    assert_eq!(v(""), Value::Empty);
    assert_eq!(v("  # c"), Value::Empty);
    assert_eq!(v(" |-"), Value::Block);
    assert_eq!(v(" >2 # c"), Value::Block);
    assert!(matches!(v(" *a"), Value::Other { .. }));
    assert!(matches!(v(" a: b"), Value::Other { .. }));
}

#[test]
fn previous_and_changes_follow_the_file_order() {
    // The entry is finished after the `image:` line inside it is seen.
    let text =
        "images:\n- name: 127.0.0.1:5000/app\n  newTag: \"1\"\n  image: 127.0.0.1:5000/app:0\n";
    let e = ed(text, "127.0.0.1:5000/app:2");
    assert_eq!(e.previous.as_deref(), Some("127.0.0.1:5000/app:1"));
    assert_eq!(
        e.changes.iter().map(|c| c.line).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(
        e.found.iter().map(|f| f.line).collect::<Vec<_>>(),
        vec![2, 4]
    );
}

#[test]
fn odd_entries_of_other_images_are_left_alone() {
    let text = "images:\n- name: postgres\n  newName: &pg registry/postgres\n- name: 127.0.0.1:5000/app\n  newTag: \"1\"\n";
    let e = ed(text, "127.0.0.1:5000/app:2");
    assert_eq!(e.text, text.replace("\"1\"", "\"2\""));
    let p = problems(
        "images:\n- name: 127.0.0.1:5000/app\n  newName: *x\n",
        "127.0.0.1:5000/app:2",
    );
    assert!(p[0].message.contains("`newName`"), "{p:?}");
}

#[test]
fn kustomize_inline_patches_are_text() {
    let text = "patches:\n  - target:\n      kind: Deployment\n    patch: |-\n      spec:\n        template:\n          spec:\n            containers:\n              - name: app\n                image: 127.0.0.1:5000/app:1\nimages:\n  - name: 127.0.0.1:5000/app\n    newTag: \"1\"\n";
    let p = problems(text, "127.0.0.1:5000/app:2");
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].line, 10);
    assert!(p[0].message.contains("block scalar of line 4"), "{p:?}");
    // Without the inline patch, the entry after it is edited.
    let text = "patches:\n  - patch: |-\n      kind: Deployment\nimages:\n  - name: 127.0.0.1:5000/app\n    newTag: \"1\"\n";
    assert_eq!(
        ed(text, "127.0.0.1:5000/app:2").text,
        text.replace("\"1\"", "\"2\"")
    );
}
