//! A JSON parser for record payloads, building [`Value`]s that borrow every unescaped string
//! from the payload (pure; no I/O).
//!
//! Hand-written because parsing dominates the cost of a record: it is about twice as fast as
//! going through serde for this value type. Strict RFC 8259: one document, optional
//! surrounding whitespace, no trailing commas, no control characters in strings, nesting at
//! most 128 deep. Integers that fit `i64` stay integers; other numbers are parsed exactly to
//! `f64` by the standard library.

use std::borrow::Cow;

use super::value::{Object, Value, same_key};

/// Maximum nesting of arrays and objects (as serde_json's default).
const MAX_DEPTH: usize = 128;

/// Parses one JSON document; the error says what was wrong and at which byte.
pub(crate) fn parse(bytes: &[u8]) -> Result<Value<'_>, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
    let mut parser = Parser {
        text,
        bytes,
        pos: 0,
        depth: 0,
        error: None,
    };
    let mut value = Value::Null;
    let parsed = parser.document(&mut value);
    match (parsed, parser.error) {
        (Ok(()), _) => Ok(value),
        (Err(Failed), Some(message)) => Err(message),
        (Err(Failed), None) => Err("invalid JSON".to_owned()),
    }
}

/// Parsing failed; the message is in [`Parser::error`]. Values are built in place and
/// failures carry no data, so no value is moved through a `Result` (which measurably slowed
/// parsing down).
struct Failed;

type Parsed = Result<(), Failed>;

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
    error: Option<String>,
}

impl<'a> Parser<'a> {
    #[cold]
    fn fail(&mut self, what: &str) -> Failed {
        self.error = Some(if self.pos >= self.bytes.len() {
            format!("invalid JSON: {what} at end of input")
        } else {
            format!("invalid JSON: {what} at byte {}", self.pos)
        });
        Failed
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    fn document(&mut self, slot: &mut Value<'a>) -> Parsed {
        self.skip_whitespace();
        self.value(slot)?;
        self.skip_whitespace();
        if self.pos != self.bytes.len() {
            return Err(self.fail("trailing characters"));
        }
        Ok(())
    }

    /// Parses a value into `slot`.
    fn value(&mut self, slot: &mut Value<'a>) -> Parsed {
        match self.peek() {
            Some(b'"') => {
                *slot = Value::Str(Cow::Borrowed(""));
                match slot {
                    Value::Str(text) => self.string(text),
                    _ => Err(self.fail("expected a value")),
                }
            }
            Some(b'{') => self.object(slot),
            Some(b'[') => self.array(slot),
            Some(b'-' | b'0'..=b'9') => self.number(slot),
            Some(b't') => self.literal("true", Value::Bool(true), slot),
            Some(b'f') => self.literal("false", Value::Bool(false), slot),
            Some(b'n') => self.literal("null", Value::Null, slot),
            _ => Err(self.fail("expected a value")),
        }
    }

    fn literal(&mut self, word: &str, value: Value<'a>, slot: &mut Value<'a>) -> Parsed {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            *slot = value;
            Ok(())
        } else {
            Err(self.fail("expected a value"))
        }
    }

    fn enter(&mut self) -> Parsed {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.fail("nesting too deep"));
        }
        self.pos += 1;
        self.skip_whitespace();
        Ok(())
    }

    fn array(&mut self, slot: &mut Value<'a>) -> Parsed {
        self.enter()?;
        *slot = Value::Arr(Vec::new());
        let Value::Arr(items) = slot else {
            return Err(self.fail("expected a value"));
        };
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        items.reserve(4);
        loop {
            items.push(Value::Null);
            if let Some(item) = items.last_mut() {
                self.value(item)?;
            }
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_whitespace();
                }
                Some(b']') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(self.fail("expected ',' or ']'")),
            }
        }
    }

    fn object(&mut self, slot: &mut Value<'a>) -> Parsed {
        self.enter()?;
        *slot = Value::Obj(Object::new());
        let Value::Obj(object) = slot else {
            return Err(self.fail("expected a value"));
        };
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        object.reserve(8);
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.fail("expected a string key"));
            }
            // Build the entry in place (moving values around costs more than parsing them).
            object.push((Cow::Borrowed(""), Value::Null));
            let last = object.len() - 1;
            let (earlier, entry) = object.split_at_mut(last);
            let Some((key, value)) = entry.first_mut() else {
                return Err(self.fail("expected a value"));
            };
            self.string(key)?;
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err(self.fail("expected ':'"));
            }
            self.pos += 1;
            self.skip_whitespace();
            match earlier.iter_mut().find(|(k, _)| same_key(k, key)) {
                // Duplicate keys: the last value wins at the first position, as in jq.
                Some((_, first)) => {
                    self.value(first)?;
                    object.pop();
                }
                None => self.value(value)?,
            }
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_whitespace();
                }
                Some(b'}') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(self.fail("expected ',' or '}'")),
            }
        }
    }

    /// A string starting at the opening quote, into `out`; borrowed unless it has escapes.
    fn string(&mut self, out: &mut Cow<'a, str>) -> Parsed {
        self.pos += 1;
        let start = self.pos;
        let special = |b: &u8| matches!(*b, b'"' | b'\\' | 0x00..=0x1f);
        match self.bytes[start..].iter().position(special) {
            Some(length) => self.pos = start + length,
            None => {
                self.pos = self.bytes.len();
                return Err(self.fail("unterminated string"));
            }
        }
        match self.peek() {
            Some(b'"') => {
                *out = Cow::Borrowed(&self.text[start..self.pos]);
                self.pos += 1;
                return Ok(());
            }
            Some(b'\\') => {}
            _ => return Err(self.fail("control character in string")),
        }
        let mut owned = String::with_capacity(self.pos - start + 16);
        let mut run = start;
        loop {
            match self.peek() {
                Some(b'"') => {
                    owned.push_str(&self.text[run..self.pos]);
                    self.pos += 1;
                    *out = Cow::Owned(owned);
                    return Ok(());
                }
                Some(b'\\') => {
                    owned.push_str(&self.text[run..self.pos]);
                    self.pos += 1;
                    self.escape(&mut owned)?;
                    run = self.pos;
                }
                Some(0x00..=0x1f) => return Err(self.fail("control character in string")),
                Some(_) => self.pos += 1,
                None => return Err(self.fail("unterminated string")),
            }
        }
    }

    /// One escape sequence after the backslash.
    fn escape(&mut self, out: &mut String) -> Parsed {
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 1;
                let first = self.hex4()?;
                let code = match first {
                    0xd800..=0xdbff => {
                        if !self.bytes[self.pos..].starts_with(b"\\u") {
                            return Err(self.fail("lone leading surrogate in \\u escape"));
                        }
                        self.pos += 2;
                        let second = self.hex4()?;
                        if !(0xdc00..=0xdfff).contains(&second) {
                            return Err(self.fail("invalid surrogate pair in \\u escape"));
                        }
                        0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
                    }
                    0xdc00..=0xdfff => {
                        return Err(self.fail("lone trailing surrogate in \\u escape"));
                    }
                    code => code,
                };
                match char::from_u32(code) {
                    Some(c) => out.push(c),
                    None => return Err(self.fail("invalid \\u escape")),
                }
                return Ok(());
            }
            _ => return Err(self.fail("invalid escape")),
        };
        out.push(c);
        self.pos += 1;
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, Failed> {
        let Some(digits) = self.bytes.get(self.pos..self.pos + 4) else {
            return Err(self.fail("truncated \\u escape"));
        };
        let mut code = 0;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.fail("invalid \\u escape")),
            };
            code = code * 16 + u32::from(v);
        }
        self.pos += 4;
        Ok(code)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self, slot: &mut Value<'a>) -> Parsed {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let int_start = self.pos;
        match self.digits() {
            0 => return Err(self.fail("expected a digit")),
            1 => {}
            _ if self.bytes[int_start] == b'0' => {
                self.pos = int_start + 1;
                return Err(self.fail("leading zero in number"));
            }
            _ => {}
        }
        let int_end = self.pos;
        let mut integral = true;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            integral = false;
            if self.digits() == 0 {
                return Err(self.fail("expected a digit after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            integral = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.fail("expected a digit in the exponent"));
            }
        }
        if integral {
            // Accumulate negatively so that i64::MIN fits.
            let mut n: i64 = 0;
            let mut fits = true;
            for &d in &self.bytes[int_start..int_end] {
                match n
                    .checked_mul(10)
                    .and_then(|n| n.checked_sub(i64::from(d - b'0')))
                {
                    Some(next) => n = next,
                    None => {
                        fits = false;
                        break;
                    }
                }
            }
            let n = if negative { Some(n) } else { n.checked_neg() };
            if let (true, Some(n)) = (fits, n) {
                *slot = Value::Int(n);
                return Ok(());
            }
        }
        match self.text[start..self.pos].parse() {
            Ok(f) => {
                *slot = Value::Float(f);
                Ok(())
            }
            Err(_) => Err(self.fail("invalid number")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use crate::pipeline::write::{NonFinite, write_value};

    fn reparsed(text: &str) -> Result<String, String> {
        let value = parse(text.as_bytes())?;
        let mut out = Vec::new();
        write_value(&mut out, &value, NonFinite::JaqText);
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn parses_what_serde_json_parses_and_rejects_what_it_rejects() {
        let documents = [
            r#" {"a" : [1, -2, 3.5, -0.0, 1e2, 1E-2, 0] , "b":{"c":null,"d":true,"e":false}} "#,
            r#""esc \" \\ \/ \b \f \n \r \t \u00e9 \ud83d\ude00 é""#,
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "123456789012345678901234567890",
            "[]",
            "{}",
            "[[[]]]",
            "0.1",
            "1.7976931348623157e308",
            "",
            "  ",
            "[1,]",
            "{\"a\":1,}",
            "{a:1}",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "tru",
            "nul",
            "\"unterminated",
            "\"tab\there\"",
            r#""\x""#,
            r#""\ud800""#,
            r#""\udc00x""#,
            r#""\u12""#,
            "[1] [2]",
            "{\"a\" 1}",
            "NaN",
            "\u{feff}1",
        ];
        for document in documents {
            let ours = parse(document.as_bytes());
            let serde = serde_json::from_str::<serde_json::Value>(document);
            assert_eq!(
                ours.is_ok(),
                serde.is_ok(),
                "{document:?}: {ours:?} vs {serde:?}"
            );
        }
        assert!(parse(b"\"\xff\"").is_err(), "invalid UTF-8");
        let deep = "[".repeat(129) + &"]".repeat(129);
        assert!(parse(deep.as_bytes()).is_err());
        let ok = "[".repeat(128) + &"]".repeat(128);
        assert!(parse(ok.as_bytes()).is_ok());
    }

    #[test]
    fn numbers_keep_integers_exact_and_floats_as_floats() {
        assert_eq!(
            reparsed("[0, -0, 1.0, 1e2, -5, 0.1]"),
            Ok("[0,0,1.0,100.0,-5,0.1]".into())
        );
        assert_eq!(
            reparsed("9223372036854775807"),
            Ok("9223372036854775807".into())
        );
        assert_eq!(
            reparsed("-9223372036854775808"),
            Ok("-9223372036854775808".into())
        );
        assert_eq!(
            reparsed("9223372036854775808"),
            Ok("9.223372036854776e18".into())
        );
    }

    #[test]
    fn strings_borrow_unless_escaped_and_duplicate_keys_keep_the_last_value() {
        use crate::pipeline::value::Value;
        use std::borrow::Cow;
        let Ok(Value::Obj(object)) = parse(br#"{"plain":"x","esc":"a\nb","plain":"y"}"#) else {
            panic!("an object")
        };
        assert_eq!(object.len(), 2);
        assert!(matches!(
            &object[0],
            (Cow::Borrowed("plain"), Value::Str(Cow::Borrowed("y")))
        ));
        assert!(matches!(&object[1].1, Value::Str(Cow::Owned(s)) if s == "a\nb"));
    }

    proptest::proptest! {
        #[test]
        fn written_values_parse_back_to_the_same_text(
            value in crate::pipeline::jq::tests::json_value()
        ) {
            let mut text = Vec::new();
            write_value(&mut text, &value, NonFinite::Json);
            let text = String::from_utf8_lossy(&text).into_owned();
            proptest::prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
            proptest::prop_assert_eq!(reparsed(&text), Ok(text.clone()));
        }
    }

    #[test]
    fn errors_say_where() {
        assert_eq!(
            parse(b"{\"a\" 1}").err(),
            Some("invalid JSON: expected ':' at byte 5".into())
        );
        assert_eq!(
            parse(b"[1,").err(),
            Some("invalid JSON: expected a value at end of input".into())
        );
    }
}
