//! A small XML tree for the pictures' tests: parsing one fails the test
//! unless the SVG is well-formed XML.
use quick_xml::events::Event;
use quick_xml::Reader;

#[derive(Debug, Default, Clone)]
pub struct El {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    /// The text directly inside, unescaped.
    pub text: String,
    pub children: Vec<El>,
}

impl El {
    pub fn attr(&self, k: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    pub fn num(&self, k: &str) -> f64 {
        self.attr(k)
            .unwrap_or_else(|| panic!("<{}> has no {k}", self.name))
            .parse()
            .unwrap()
    }

    fn walk<'a>(&'a self, out: &mut Vec<&'a El>, pred: &dyn Fn(&El) -> bool) {
        if pred(self) {
            out.push(self);
        }
        for c in &self.children {
            c.walk(out, pred);
        }
    }

    /// Every element below (and including) this one that `pred` accepts.
    pub fn find(&self, pred: impl Fn(&El) -> bool) -> Vec<&El> {
        let mut out = Vec::new();
        self.walk(&mut out, &pred);
        out
    }
}

pub struct Doc {
    pub root: El,
}

impl Doc {
    pub fn elements(&self, name: &str) -> Vec<&El> {
        self.root.find(|e| e.name == name)
    }

    /// The element with `data-stage` (or `data-run`) `key`, of type `name`.
    pub fn by(&self, name: &str, attr: &str, key: &str) -> &El {
        self.root
            .find(|e| e.name == name && e.attr(attr) == Some(key))
            .first()
            .copied()
            .unwrap_or_else(|| panic!("no <{name} {attr}=\"{key}\">"))
    }
}

fn el(e: &quick_xml::events::BytesStart) -> El {
    El {
        name: String::from_utf8(e.name().as_ref().to_vec()).unwrap(),
        attrs: e
            .attributes()
            .map(|a| {
                let a = a.expect("a well-formed attribute");
                let k = String::from_utf8(a.key.as_ref().to_vec()).unwrap();
                (k, a.unescape_value().expect("escaped value").into_owned())
            })
            .collect(),
        ..El::default()
    }
}

/// Parse `svg`, panicking with it when it is not well-formed XML.
pub fn parse(svg: &str) -> Doc {
    let mut reader = Reader::from_str(svg);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<El> = vec![El::default()];
    loop {
        let ev = reader
            .read_event()
            .unwrap_or_else(|e| panic!("not XML: {e}\n{svg}"));
        match ev {
            Event::Start(e) => stack.push(el(&e)),
            Event::Empty(e) => stack.last_mut().unwrap().children.push(el(&e)),
            Event::End(_) => {
                let done = stack.pop().unwrap();
                stack.last_mut().expect("balanced").children.push(done);
            }
            Event::Text(t) => stack.last_mut().unwrap().text += &t.decode().unwrap(),
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref().unwrap() {
                    Some(c) => c,
                    None => match &*r.decode().unwrap() {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "quot" => '"',
                        "apos" => '\'',
                        other => panic!("unknown entity &{other};\n{svg}"),
                    },
                };
                stack.last_mut().unwrap().text.push(c);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(stack.len(), 1, "unclosed elements\n{svg}");
    let mut top = stack.pop().unwrap().children;
    assert_eq!(top.len(), 1, "one root element\n{svg}");
    let root = top.pop().unwrap();
    assert_eq!(root.name, "svg");
    Doc { root }
}
