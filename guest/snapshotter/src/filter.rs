//! containerd's filter language, as `List` receives it.
//!
//! A filter is a comma-separated list of selectors that must all match; `List` shows a
//! snapshot if any of its filters matches (none means all). A selector is a field path with an
//! optional operator and value:
//!
//! ```text
//! name==default/1/sha256:…        parent!=""        kind==committed
//! labels."containerd.io/gc.root"   labels.foo~=^ba[rz]$
//! ```
//!
//! Field path parts are bare words (`[A-Za-z0-9_]`) or double-quoted strings; values are bare
//! (up to a comma or space) or quoted: `"…"` with backslash escapes, or `/…/` and `|…|`, which
//! suit regular expressions. A missing field reads as the empty string for `!=` and `~=`.

use regex::Regex;

/// A parsed filter: its selectors must all match.
#[derive(Debug)]
pub struct Filter {
    selectors: Vec<Selector>,
}

#[derive(Debug)]
struct Selector {
    path: Vec<String>,
    test: Test,
}

#[derive(Debug)]
enum Test {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

/// A filter that does not parse: what was wrong and where.
#[derive(Debug, thiserror::Error)]
#[error("filter {filter:?}: {why} at byte {at}")]
pub struct FilterError {
    filter: String,
    why: String,
    at: usize,
}

/// What a filter can ask of the thing it tests.
pub trait Fields {
    /// The value at `path`, or `None` if the thing has no such field.
    fn field(&self, path: &[String]) -> Option<String>;
}

impl Filter {
    /// Parses one filter expression.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let mut p = Parser { text, at: 0 };
        let mut selectors = Vec::new();
        loop {
            selectors.push(p.selector()?);
            p.skip_spaces();
            match p.peek() {
                None => break,
                Some(b',') => p.at += 1,
                Some(_) => return Err(p.error("expected ',' or the end")),
            }
        }
        Ok(Filter { selectors })
    }

    /// Whether `thing` passes every selector.
    pub fn matches(&self, thing: &impl Fields) -> bool {
        self.selectors.iter().all(|s| {
            let value = thing.field(&s.path);
            match &s.test {
                Test::Present => value.is_some(),
                Test::Equal(want) => value.as_deref() == Some(want.as_str()),
                Test::NotEqual(want) => value.as_deref().unwrap_or("") != want,
                Test::Matches(re) => re.is_match(value.as_deref().unwrap_or("")),
            }
        })
    }
}

/// Whether `thing` passes any of `filters` (all pass when there are none).
pub fn any_matches(filters: &[Filter], thing: &impl Fields) -> bool {
    filters.is_empty() || filters.iter().any(|f| f.matches(thing))
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn error(&self, why: &str) -> FilterError {
        FilterError { filter: self.text.to_string(), why: why.to_string(), at: self.at }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        self.skip_spaces();
        let mut path = vec![self.field()?];
        while self.peek() == Some(b'.') {
            self.at += 1;
            path.push(self.field()?);
        }
        self.skip_spaces();
        let rest = &self.text[self.at..];
        let op = ["==", "!=", "~="].into_iter().find(|op| rest.starts_with(op));
        let Some(op) = op else {
            return Ok(Selector { path, test: Test::Present });
        };
        self.at += 2;
        self.skip_spaces();
        let value = self.value()?;
        let test = match op {
            "==" => Test::Equal(value),
            "!=" => Test::NotEqual(value),
            _ => Test::Matches(Regex::new(&value).map_err(|e| self.error(&format!("bad regular expression: {e}")))?),
        };
        Ok(Selector { path, test })
    }

    fn field(&mut self) -> Result<String, FilterError> {
        if self.peek() == Some(b'"') {
            return self.quoted('"');
        }
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            self.at += 1;
        }
        if self.at == start {
            return Err(self.error("expected a field name"));
        }
        Ok(self.text[start..self.at].to_string())
    }

    fn value(&mut self) -> Result<String, FilterError> {
        if let Some(quote @ (b'"' | b'/' | b'|')) = self.peek() {
            return self.quoted(char::from(quote));
        }
        let start = self.at;
        while self.peek().is_some_and(|b| b != b',' && !b.is_ascii_whitespace()) {
            self.at += 1;
        }
        if self.at == start {
            return Err(self.error("expected a value"));
        }
        Ok(self.text[start..self.at].to_string())
    }

    /// A string between two `quote`s (`"`, or `/` and `|` around regular expressions).
    fn quoted(&mut self, quote: char) -> Result<String, FilterError> {
        let open = self.at;
        self.at += 1;
        let mut out = String::new();
        let mut chars = self.text[self.at..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                c if c == quote => {
                    self.at += i + 1;
                    return Ok(out);
                }
                // In a regular expression, escapes belong to the expression, except the quote's.
                '\\' if quote != '"' => match chars.next() {
                    Some((_, c)) if c == quote => out.push(c),
                    Some((_, c)) => {
                        out.push('\\');
                        out.push(c);
                    }
                    None => break,
                },
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, other)) => out.push(other),
                    None => break,
                },
                c => out.push(c),
            }
        }
        self.at = open;
        Err(self.error("unterminated quoted string"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    struct Thing(BTreeMap<&'static str, &'static str>);

    impl Fields for Thing {
        fn field(&self, path: &[String]) -> Option<String> {
            self.0.get(path.join(".").as_str()).map(|v| v.to_string())
        }
    }

    fn thing() -> Thing {
        Thing(BTreeMap::from([
            ("name", "default/1/sha256:ab"),
            ("kind", "committed"),
            ("labels.containerd.io/gc.root", "x"),
            ("labels.foo", "bar"),
        ]))
    }

    fn check(filter: &str) -> bool {
        Filter::parse(filter).unwrap_or_else(|e| panic!("{e}")).matches(&thing())
    }

    #[test]
    fn selectors_test_what_they_say() {
        assert!(check("kind==committed"));
        assert!(!check("kind==active"));
        assert!(check("kind!=active"));
        assert!(check("parent!=x"), "a missing field differs from any value");
        assert!(check(r#"labels."containerd.io/gc.root""#));
        assert!(!check("labels.missing"));
        assert!(check("labels.foo~=^ba[rz]$"));
        assert!(check(r#"name=="default/1/sha256:ab""#));
        assert!(check(r#"name!="""#) && !check(r#"parent!="""#), "a missing field reads as empty");
        assert!(check("labels.foo~=/^b.r$/") && check("labels.foo~=|b\\|x|"));
        assert!(check("parent~=^$"), "a missing field matches as the empty string");
        assert!(check("name==default/1/sha256:ab, labels.foo==bar"));
        assert!(!check("name==default/1/sha256:ab,labels.foo==baz"));
    }

    #[test]
    fn any_of_several_filters_is_enough() {
        let filters = ["kind==active", "labels.foo==bar"].map(|f| Filter::parse(f).expect("parses"));
        assert!(any_matches(&filters, &thing()));
        assert!(any_matches(&[], &thing()));
        assert!(!any_matches(&filters[..1], &thing()));
    }

    #[test]
    fn malformed_filters_say_what_is_wrong() {
        for (bad, why) in [
            ("", "expected a field name"),
            ("name==", "expected a value"),
            ("labels.\"open", "unterminated"),
            ("name~=(", "bad regular expression"),
            ("==x", "expected a field name"),
            ("a.", "expected a field name"),
        ] {
            match Filter::parse(bad) {
                Err(e) => assert!(e.to_string().contains(why), "{bad:?}: {e}"),
                Ok(f) => panic!("{bad:?} parsed as {f:?}"),
            }
        }
    }
}
