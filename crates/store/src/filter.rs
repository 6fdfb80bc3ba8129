//! containerd's filter language (`github.com/containerd/containerd/filters`,
//! v1.6), as used by the `filters` of the snapshots `List` (Walk) RPC.
//!
//! ```text
//! filter    := selector ( "," selector )*       all selectors must match
//! selector  := fieldpath [ operator value ]     no operator: the field must be present
//! fieldpath := field ( "." field )*
//! field     := dquoted | [A-Za-z0-9_-]+          (a field may start with a digit or '-')
//! operator  := "==" | "!=" | "~="
//! value     := dquoted | rquoted | valuechar+    (rquoted only after "~=")
//! valuechar := any char except ',', whitespace and control characters;
//!              the first one may not be '.', '=', '!', '~' or a quote
//! dquoted   := '"' ... '"'   Go string-literal escapes: \a \b \f \n \r \t \v \\ \"
//!                            \ooo (octal, <= 255) \xHH \uHHHH \UHHHHHHHH
//! rquoted   := '/' ... '/' | '|' ... '|'
//!              a backslash before the quote character yields that character; every
//!              other backslash is kept, with the character after it, literally, so
//!              `/foo\.bar/` is the regular expression `foo\.bar`
//! ```
//!
//! Whitespace between tokens is skipped. Quoted strings may not contain a newline.
//! Positions in [`FilterError`] are byte offsets into the filter string.
//!
//! Matching (containerd's `selector.Match`): with no operator the field must be
//! present; `==` needs it present and equal; `!=` compares the value (empty if
//! absent) for inequality; `~=` searches the value (empty if absent) with the
//! regular expression, unanchored. A regular expression is compiled while parsing,
//! so a bad one is a parse error.
//!
//! Deliberate differences from containerd v1.6, all of which only accept more:
//! containerd does not skip whitespace before `,`, `.` or the end of input, and it
//! treats backslashes inside `/…/` and `|…|` like Go escapes (so it rejects `\.`).

use std::collections::BTreeMap;

use regex::Regex;

/// Something a filter can look fields up in.
pub trait FieldSource {
    /// `path` is the already-split field path, e.g.
    /// `["labels", "containerd.io/snapshot.ref"]` or `["name"]`.
    /// `None` means the field is absent.
    fn field(&self, path: &[String]) -> Option<String>;
}

/// A parsed filter: matches when any of its conjunctions matches; a conjunction
/// matches when all of its selectors do (an empty conjunction matches everything).
#[derive(Debug, Clone)]
pub struct Filter {
    any: Vec<Vec<Selector>>,
}

/// A filter string that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid filter {input:?}: {message} at position {position}")]
pub struct FilterError {
    /// The offending filter string.
    pub input: String,
    /// Byte offset in `input` where the problem was found.
    pub position: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

impl Selector {
    fn matches(&self, src: &dyn FieldSource) -> bool {
        let value = src.field(&self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(want) => value.as_deref() == Some(want.as_str()),
            Op::NotEqual(want) => value.as_deref().unwrap_or("") != want,
            Op::Matches(re) => re.is_match(value.as_deref().unwrap_or("")),
        }
    }
}

impl Filter {
    /// A filter that matches everything (containerd's `Always`).
    fn always() -> Filter {
        Filter {
            any: vec![Vec::new()],
        }
    }

    /// Parse the `filters` of a List request: the result matches when ANY of the
    /// strings matches. An empty slice, or slices whose strings are all empty,
    /// match everything (containerd: Always).
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Filter, FilterError> {
        if filters.is_empty() {
            return Ok(Filter::always());
        }
        let mut any = Vec::new();
        for filter in filters {
            any.extend(Filter::parse(filter.as_ref())?.any);
        }
        Ok(Filter { any })
    }

    /// Parse one filter string (an empty string matches everything).
    pub fn parse(filter: &str) -> Result<Filter, FilterError> {
        if filter.is_empty() {
            return Ok(Filter::always());
        }
        let all = Parser {
            input: filter,
            pos: 0,
        }
        .selectors()?;
        Ok(Filter { any: vec![all] })
    }

    /// Whether `src` passes the filter.
    pub fn matches(&self, src: &dyn FieldSource) -> bool {
        self.any
            .iter()
            .any(|all| all.iter().all(|sel| sel.matches(src)))
    }
}

/// Hand-written scanner and recursive-descent parser over one filter string.
struct Parser<'a> {
    input: &'a str,
    /// Byte offset of the next unread character.
    pos: usize,
}

fn is_field_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// containerd's isValueRune (letters, digits, graphic and punctuation, but no
/// whitespace and no ','); control characters stand in for "not graphic".
fn is_value_char(c: char) -> bool {
    c != ',' && !c.is_whitespace() && !c.is_control()
}

impl Parser<'_> {
    fn error(&self, position: usize, message: impl Into<String>) -> FilterError {
        FilterError {
            input: self.input.to_owned(),
            position,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.input[self.pos..].chars().next()
    }

    /// Consume and return the next character.
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    /// Consume characters while `pred` holds and return them.
    fn take_while(&mut self, pred: impl Fn(char) -> bool) -> &str {
        let start = self.pos;
        while self.peek().is_some_and(&pred) {
            self.bump();
        }
        &self.input[start..self.pos]
    }

    /// `selector ( "," selector )*` up to the end of input.
    fn selectors(&mut self) -> Result<Vec<Selector>, FilterError> {
        let mut all = vec![self.selector()?];
        loop {
            self.skip_whitespace();
            match self.peek() {
                None => return Ok(all),
                Some(',') => {
                    self.bump();
                    all.push(self.selector()?);
                }
                Some(c) => {
                    return Err(self.error(self.pos, format!("unexpected input {c:?}")));
                }
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        let path = self.fieldpath()?;
        self.skip_whitespace();
        if matches!(self.peek(), None | Some(',')) {
            return Ok(Selector {
                path,
                op: Op::Present,
            });
        }

        let op_pos = self.pos;
        let op = self.take_while(|c| matches!(c, '=' | '!' | '~')).to_owned();
        if !matches!(op.as_str(), "==" | "!=" | "~=") {
            let message = if op.is_empty() {
                "expected an operator (\"==\", \"!=\" or \"~=\")".to_owned()
            } else {
                format!("unsupported operator {op:?}")
            };
            return Err(self.error(op_pos, message));
        }

        self.skip_whitespace();
        let value_pos = self.pos;
        let value = self.value(op == "~=")?;
        let op = match op.as_str() {
            "==" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            _ => match Regex::new(&value) {
                Ok(re) => Op::Matches(re),
                Err(e) => {
                    return Err(self.error(value_pos, format!("invalid regular expression: {e}")))
                }
            },
        };
        Ok(Selector { path, op })
    }

    fn fieldpath(&mut self) -> Result<Vec<String>, FilterError> {
        let mut path = vec![self.field()?];
        loop {
            self.skip_whitespace();
            if self.peek() != Some('.') {
                return Ok(path);
            }
            self.bump();
            path.push(self.field()?);
        }
    }

    fn field(&mut self) -> Result<String, FilterError> {
        self.skip_whitespace();
        let start = self.pos;
        match self.peek() {
            Some(c) if is_field_char(c) => Ok(self.take_while(is_field_char).to_owned()),
            Some('"') => self.double_quoted(),
            Some('/' | '|') => Err(self.error(
                start,
                "invalid quote encountered (a field may only be quoted with '\"')",
            )),
            _ => Err(self.error(start, "expected field or quoted string")),
        }
    }

    /// The value after an operator; `/…/` and `|…|` are allowed only for `~=`.
    fn value(&mut self, regex_quotes: bool) -> Result<String, FilterError> {
        let start = self.pos;
        match self.peek() {
            Some('"') => self.double_quoted(),
            Some(q @ ('/' | '|')) if regex_quotes => self.regex_quoted(q),
            Some('/' | '|') => Err(self.error(
                start,
                "invalid quote encountered ('/' and '|' quote only the value of \"~=\")",
            )),
            Some(c) if is_value_char(c) && !matches!(c, '.' | '=' | '!' | '~') => {
                Ok(self.take_while(is_value_char).to_owned())
            }
            _ => Err(self.error(start, "expected value or quoted string")),
        }
    }

    /// A `"`-quoted string with Go escapes; `self.pos` is at the opening quote.
    fn double_quoted(&mut self) -> Result<String, FilterError> {
        let start = self.pos;
        self.bump();
        let mut out: Vec<u8> = Vec::new();
        loop {
            let at = self.pos;
            match self.bump() {
                None | Some('\n') => return Err(self.error(start, "unterminated quoted string")),
                Some('"') => break,
                Some('\\') => self.escape(at, &mut out)?,
                Some(c) => push_char(&mut out, c),
            }
        }
        String::from_utf8(out).map_err(|_| self.error(start, "quoted string is not valid UTF-8"))
    }

    /// One Go escape after the backslash at byte offset `at`.
    fn escape(&mut self, at: usize, out: &mut Vec<u8>) -> Result<(), FilterError> {
        let bad = |p: &Self| p.error(at, "invalid escape sequence");
        let c = self.bump().ok_or_else(|| bad(self))?;
        let simple = match c {
            'a' => Some('\u{7}'),
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\u{b}'),
            '\\' | '"' => Some(c),
            _ => None,
        };
        if let Some(s) = simple {
            push_char(out, s);
            return Ok(());
        }
        match c {
            '0'..='7' => {
                let rest = self.digits(8, 2).ok_or_else(|| bad(self))?;
                let hi = u32::from(c) - u32::from('0');
                let byte = u8::try_from((hi << 6) | rest).map_err(|_| bad(self))?;
                out.push(byte);
            }
            'x' => {
                let v = self.digits(16, 2).ok_or_else(|| bad(self))?;
                out.push(u8::try_from(v).map_err(|_| bad(self))?);
            }
            'u' | 'U' => {
                let v = self
                    .digits(16, if c == 'u' { 4 } else { 8 })
                    .ok_or_else(|| bad(self))?;
                if v > 0x10FFFF {
                    return Err(bad(self));
                }
                // Go encodes a surrogate code point as U+FFFD.
                push_char(out, char::from_u32(v).unwrap_or('\u{FFFD}'));
            }
            _ => return Err(bad(self)),
        }
        Ok(())
    }

    /// Exactly `n` digits in `radix`, as a number.
    fn digits(&mut self, radix: u32, n: usize) -> Option<u32> {
        let mut v: u32 = 0;
        for _ in 0..n {
            let d = self.peek()?.to_digit(radix)?;
            self.bump();
            v = v * radix + d;
        }
        Some(v)
    }

    /// A `/`- or `|`-quoted regular expression; `self.pos` is at the opening quote.
    fn regex_quoted(&mut self, quote: char) -> Result<String, FilterError> {
        let start = self.pos;
        self.bump();
        let mut out = String::new();
        loop {
            match self.bump() {
                None | Some('\n') => return Err(self.error(start, "unterminated quoted string")),
                Some(c) if c == quote => return Ok(out),
                Some('\\') => match self.bump() {
                    None | Some('\n') => {
                        return Err(self.error(start, "unterminated quoted string"))
                    }
                    Some(c) if c == quote => out.push(c),
                    Some(c) => {
                        out.push('\\');
                        out.push(c);
                    }
                },
                Some(c) => out.push(c),
            }
        }
    }
}

fn push_char(out: &mut Vec<u8>, c: char) {
    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
}

/// How containerd's snapshotters expose a snapshot to filters (adaptSnapshot):
/// "name", "parent" are always present (possibly ""), "kind" is "active" | "view" |
/// "committed", "labels" followed by the key parts re-joined with "." looks up a
/// label; a bare "labels" with no key, or any other field, is absent.
pub struct SnapshotFields<'a> {
    pub name: &'a str,
    pub parent: &'a str,
    pub kind: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl FieldSource for SnapshotFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let (first, rest) = path.split_first()?;
        match first.as_str() {
            "name" => Some(self.name.to_owned()),
            "parent" => Some(self.parent.to_owned()),
            "kind" => {
                matches!(self.kind, "active" | "view" | "committed").then(|| self.kind.to_owned())
            }
            "labels" if !rest.is_empty() => self.labels.get(&rest.join(".")).cloned(),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    struct Snap {
        name: &'static str,
        parent: &'static str,
        kind: &'static str,
        labels: BTreeMap<String, String>,
    }

    fn snap(name: &'static str, parent: &'static str, labels: &[(&str, &str)]) -> Snap {
        Snap {
            name,
            parent,
            kind: "committed",
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    impl Snap {
        fn fields(&self) -> SnapshotFields<'_> {
            SnapshotFields {
                name: self.name,
                parent: self.parent,
                kind: self.kind,
                labels: &self.labels,
            }
        }
    }

    fn matches(filter: &str, s: &Snap) -> bool {
        Filter::parse(filter).unwrap().matches(&s.fields())
    }

    fn paths(filter: &str) -> Vec<Vec<String>> {
        Filter::parse(filter).unwrap().any[0]
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }

    /// The single-selector value of `filter`, whatever its operator.
    fn value(filter: &str) -> String {
        match &Filter::parse(filter).unwrap().any[0][0].op {
            Op::Present => panic!("no value"),
            Op::Equal(v) | Op::NotEqual(v) => v.clone(),
            Op::Matches(re) => re.as_str().to_owned(),
        }
    }

    fn err(filter: &str) -> (usize, String) {
        let e = Filter::parse(filter).unwrap_err();
        assert_eq!(e.input, filter);
        (e.position, e.message)
    }

    const REF: &str = "containerd.io/snapshot.ref";

    #[test]
    fn remote_snapshot_filter() {
        let f = format!("labels.\"{REF}\"==sha256:abc,parent==\"sha256:def\"");
        assert_eq!(
            paths(&f),
            vec![
                vec!["labels".to_owned(), REF.to_owned()],
                vec!["parent".to_owned()]
            ]
        );
        assert!(matches(
            &f,
            &snap("k", "sha256:def", &[(REF, "sha256:abc")])
        ));
        assert!(!matches(
            &f,
            &snap("k", "sha256:xyz", &[(REF, "sha256:abc")])
        ));
        assert!(!matches(
            &f,
            &snap("k", "sha256:def", &[(REF, "sha256:abcd")])
        ));
        assert!(!matches(&f, &snap("k", "sha256:def", &[("other", "x")])));
        assert!(!matches(&f, &snap("k", "sha256:def", &[])));
    }

    #[test]
    fn empty_quoted_parent() {
        let f = format!("labels.\"{REF}\"==sha256:abc,parent==\"\"");
        assert!(matches(&f, &snap("k", "", &[(REF, "sha256:abc")])));
        assert!(!matches(&f, &snap("k", "p", &[(REF, "sha256:abc")])));
        assert!(matches("parent==\"\"", &snap("k", "", &[])));
    }

    #[test]
    fn presence() {
        assert!(matches("labels.foo", &snap("k", "", &[("foo", "")])));
        assert!(!matches("labels.foo", &snap("k", "", &[("bar", "x")])));
        assert!(!matches("labels.foo", &snap("k", "", &[])));
        // name and parent are always present, even when empty.
        assert!(matches("name,parent", &snap("", "", &[])));
        assert!(!matches("nosuchfield", &snap("k", "", &[])));
        assert!(!matches("labels", &snap("k", "", &[("", "x")])));
    }

    #[test]
    fn equal_needs_presence_but_not_equal_does_not() {
        let s = snap("k", "", &[]);
        assert!(!matches("labels.x==\"\"", &s));
        assert!(matches("labels.x!=y", &s));
        assert!(!matches("labels.x!=\"\"", &s));
        let s = snap("k", "", &[("x", "y")]);
        assert!(matches("labels.x==y", &s));
        assert!(!matches("labels.x!=y", &s));
        assert!(matches("labels.x!=z", &s));
    }

    #[test]
    fn regex_match() {
        let s = snap("foo/bar.baz", "", &[]);
        assert!(matches("name~=oo", &s), "unanchored");
        assert!(!matches("name~=^oo", &s));
        assert!(matches(r"name~=/^foo\/bar\.baz$/", &s));
        assert!(matches(r"name~=|^foo/bar\.baz$|", &s));
        assert!(!matches(
            r"name~=/^foo\/bar\.baz$/",
            &snap("foo/barXbaz", "", &[])
        ));
        assert_eq!(value(r"name~=/a\/b\.c\\/"), r"a/b\.c\\");
        assert_eq!(value(r"name~=|a\|b/c|"), "a|b/c");
        assert_eq!(value(r#"name~="a\\.b""#), r"a\.b");
        // ',' ends an unquoted value, so a counted repetition needs quoting.
        assert_eq!(value("name~=/[abc]{1,2}/"), "[abc]{1,2}");
        assert_eq!(err("name~=[abc]{1,2}").0, 6);
        // An absent field is matched as "".
        assert!(matches("labels.x~=^$", &s));
        assert!(!matches("labels.x~=/./", &s));
        // Quoted regex followed by more selectors.
        assert!(matches("name~=/[abc]+/,parent==\"\"", &s));
    }

    #[test]
    fn dotted_label_keys() {
        assert_eq!(
            paths("labels.foo.bar==x"),
            vec![vec![
                "labels".to_owned(),
                "foo".to_owned(),
                "bar".to_owned()
            ]]
        );
        assert!(matches(
            "labels.foo.bar==x",
            &snap("k", "", &[("foo.bar", "x")])
        ));
        assert!(matches(
            "labels.\"a.b\".c==x",
            &snap("k", "", &[("a.b.c", "x")])
        ));
        assert!(!matches(
            "labels.foo.bar==x",
            &snap("k", "", &[("foo", "x")])
        ));
        assert!(matches(
            "labels.my-label_2==1",
            &snap("k", "", &[("my-label_2", "1")])
        ));
    }

    #[test]
    fn value_runes() {
        assert_eq!(
            value("labels.foo==omg_asdf.asdf-qwer"),
            "omg_asdf.asdf-qwer"
        );
        assert_eq!(value("name==a/b|c\"d=e"), "a/b|c\"d=e");
        assert_eq!(value("name==sha256:abc"), "sha256:abc");
        assert_eq!(value("name==ünï"), "ünï");
    }

    #[test]
    fn go_escapes_in_double_quotes() {
        assert_eq!(
            value(r#"name=="a\tb\x41\101\u00e9\U0001F600\"\\\a\b\f\n\r\v""#),
            "a\tbAAé😀\"\\\u{7}\u{8}\u{c}\n\r\u{b}"
        );
        assert_eq!(value(r#"name=="\xc3\xa9""#), "é");
        assert_eq!(value(r#"name=="too complex, yo""#), "too complex, yo");
        assert_eq!(
            paths(r#"labels."label with \\ and \"""#),
            vec![vec!["labels".to_owned(), "label with \\ and \"".to_owned()]]
        );
        // Bad escapes are reported at the backslash, bad UTF-8 at the quote.
        for (bad, position) in [
            (r#"name=="\q""#, 7),
            (r#"name=="\x4""#, 7),
            (r#"name=="ab\400""#, 9),
            (r#"name=="\'""#, 7),
            (r#"name=="\/""#, 7),
            (r#"name=="\U00110000""#, 7),
            (r#"name=="\""#, 6),
            (r#"name=="\xff""#, 6),
        ] {
            assert_eq!(err(bad).0, position, "{bad}");
        }
    }

    #[test]
    fn parse_all_ors() {
        let f = Filter::parse_all(&["name==a", "name==b,kind==committed"]).unwrap();
        assert!(f.matches(&snap("a", "", &[]).fields()));
        assert!(f.matches(&snap("b", "", &[]).fields()));
        assert!(!f.matches(&snap("c", "", &[]).fields()));
        let mut view = snap("b", "", &[]);
        view.kind = "view";
        assert!(!f.matches(&view.fields()));

        let s = snap("c", "", &[]);
        let none: [&str; 0] = [];
        assert!(Filter::parse_all(&none).unwrap().matches(&s.fields()));
        assert!(Filter::parse_all(&[""]).unwrap().matches(&s.fields()));
        assert!(Filter::parse_all(&["", ""]).unwrap().matches(&s.fields()));
        assert!(Filter::parse_all(&["name==x", ""])
            .unwrap()
            .matches(&s.fields()));
        assert!(Filter::parse("").unwrap().matches(&s.fields()));

        let e = Filter::parse_all(&["name==a".to_owned(), "name=b".to_owned()]).unwrap_err();
        assert_eq!((e.input.as_str(), e.position), ("name=b", 4));
    }

    #[test]
    fn comma_ands() {
        let f = "name==a,labels.x==1,labels.y";
        assert!(matches(f, &snap("a", "", &[("x", "1"), ("y", "")])));
        assert!(!matches(f, &snap("a", "", &[("x", "1")])));
        assert!(!matches(f, &snap("a", "", &[("x", "2"), ("y", "")])));
        assert!(!matches(f, &snap("b", "", &[("x", "1"), ("y", "")])));
    }

    #[test]
    fn whitespace_between_tokens() {
        let mut s = snap("foo", "", &[("a.b", "1")]);
        s.kind = "active";
        assert!(matches("name == foo , kind==active", &s));
        assert!(matches(" name==foo,\tkind == active ", &s));
        assert!(matches("labels . a . b == 1", &s));
        assert!(matches("name , labels.\"a.b\"", &s));
        assert!(!matches("name == foo , kind==view", &s));
        assert_eq!(
            err("name==foo bar"),
            (10, "unexpected input 'b'".to_owned())
        );
    }

    #[test]
    fn errors_with_positions() {
        let cases: &[(&str, usize)] = &[
            ("name==", 6),
            ("name=foo", 4),
            ("name===foo", 4),
            ("name~foo", 4),
            (",name", 0),
            ("name==foo,", 10),
            ("name==foo,,kind", 10),
            ("\"unterminated", 0),
            ("labels.\"x", 7),
            ("labels.\"x\ny\"", 7),
            ("name~=/(/", 6),
            ("name~=/abc", 6),
            ("labels.", 7),
            ("labels..foo", 7),
            ("labels.?x", 7),
            ("name==,kind", 6),
            ("name==.x", 6),
            ("name foo", 5),
            ("name==\"x\"y", 9),
            (" ", 1),
            ("labels.|foo|==x", 7),
            ("name==/x/", 6),
            ("naïve", 2),
        ];
        for &(input, position) in cases {
            assert_eq!(err(input).0, position, "{input}");
        }
        assert!(err("name=foo").1.contains("unsupported operator \"=\""));
        assert!(err("name~=/(/").1.contains("regular expression"));
        assert!(err("\"unterminated").1.contains("unterminated"));
    }

    #[test]
    fn field_may_start_with_digit_or_dash() {
        // containerd's isFieldRune accepts digits and '-' anywhere.
        assert_eq!(paths("1abc==x"), vec![vec!["1abc".to_owned()]]);
        assert_eq!(
            paths("labels.-x"),
            vec![vec!["labels".to_owned(), "-x".to_owned()]]
        );
        assert_eq!(
            paths("labels.\"\""),
            vec![vec!["labels".to_owned(), String::new()]]
        );
    }

    #[test]
    fn snapshot_fields() {
        let labels: BTreeMap<String, String> = [("a.b".to_owned(), "v".to_owned())].into();
        let f = SnapshotFields {
            name: "n",
            parent: "",
            kind: "view",
            labels: &labels,
        };
        let p = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(f.field(&p(&["name"])), Some("n".to_owned()));
        assert_eq!(f.field(&p(&["parent"])), Some(String::new()));
        assert_eq!(f.field(&p(&["kind"])), Some("view".to_owned()));
        assert_eq!(f.field(&p(&["labels", "a", "b"])), Some("v".to_owned()));
        assert_eq!(f.field(&p(&["labels", "a.b"])), Some("v".to_owned()));
        assert_eq!(f.field(&p(&["labels", "a"])), None);
        assert_eq!(f.field(&p(&["labels"])), None);
        assert_eq!(f.field(&p(&["other"])), None);
        assert_eq!(f.field(&[]), None);
        let bogus = SnapshotFields { kind: "", ..f };
        assert_eq!(bogus.field(&p(&["kind"])), None);
    }

    #[test]
    fn error_display() {
        let e = Filter::parse("name==").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid filter \"name==\": expected value or quoted string at position 6"
        );
    }
}
