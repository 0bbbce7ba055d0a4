//! Compiling jq to the fast path: jaq's parser gives the syntax tree, and every node of it
//! must be of a fast shape, or the whole expression stays with jaq (pure; no I/O).

use std::borrow::Cow;

use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{BinaryOp, Term};
use jaq_core::path::{Opt, Part};

use super::super::super::value::Value;
use super::{Fast, Index, Key, Piece};

/// Compiles `code` to fast alternatives (`a, b` at the top level gives two), or `None` when
/// any part of it is outside the fast subset.
pub(crate) fn compile(code: &str) -> Option<Vec<Fast>> {
    let term = jaq_core::load::parse(code, |p| p.term())?;
    let mut alternatives = Vec::new();
    comma_list(&term, &mut alternatives);
    alternatives.into_iter().map(compile_term).collect()
}

fn comma_list<'t, 's>(term: &'t Term<&'s str>, out: &mut Vec<&'t Term<&'s str>>) {
    match term {
        Term::BinOp(l, BinaryOp::Comma, r) => {
            comma_list(l, out);
            comma_list(r, out);
        }
        other => out.push(other),
    }
}

fn boxed(term: &Term<&str>) -> Option<Box<Fast>> {
    compile_term(term).map(Box::new)
}

fn compile_term(term: &Term<&str>) -> Option<Fast> {
    Some(match term {
        Term::Id => Fast::Id,
        Term::Num(n) => Fast::Lit(number_literal(n)?),
        Term::Str(None, parts) => match literal_text(parts) {
            Some(text) => Fast::Lit(Value::Str(Cow::Owned(text))),
            None => Fast::Interp(pieces(parts)?),
        },
        Term::Arr(None) => Fast::Arr(Vec::new()),
        Term::Arr(Some(items)) => {
            let mut terms = Vec::new();
            comma_list(items, &mut terms);
            Fast::Arr(terms.into_iter().map(compile_term).collect::<Option<_>>()?)
        }
        Term::Obj(entries) => Fast::Obj(
            entries
                .iter()
                .map(|(k, v)| object_entry(k, v.as_ref()))
                .collect::<Option<_>>()?,
        ),
        Term::Neg(t) => Fast::Neg(boxed(t)?),
        Term::BinOp(l, op, r) => {
            let (l, r) = (boxed(l)?, boxed(r)?);
            match op {
                BinaryOp::Pipe(None) => Fast::Pipe(l, r),
                BinaryOp::Math(op) => Fast::Math(l, *op, r),
                BinaryOp::Cmp(op) => Fast::Cmp(l, *op, r),
                BinaryOp::And => Fast::And(l, r),
                BinaryOp::Or => Fast::Or(l, r),
                BinaryOp::Alt => Fast::Alt(l, r),
                _ => return None,
            }
        }
        Term::IfThenElse(branches, otherwise) => Fast::If(
            branches
                .iter()
                .map(|(c, t)| Some((compile_term(c)?, compile_term(t)?)))
                .collect::<Option<_>>()?,
            match otherwise {
                Some(e) => boxed(e)?,
                None => Box::new(Fast::Id),
            },
        ),
        Term::TryCatch(t, None) => Fast::Try(boxed(t)?),
        Term::Call(name, args) => match (*name, &args[..]) {
            ("select", [cond]) => Fast::Select(boxed(cond)?),
            ("not", []) => Fast::Not,
            ("length", []) => Fast::Length,
            ("tostring", []) => Fast::ToString,
            ("tonumber", []) => Fast::ToNumber,
            ("type", []) => Fast::Type,
            ("empty", []) => Fast::Empty,
            ("true", []) => Fast::Lit(Value::Bool(true)),
            ("false", []) => Fast::Lit(Value::Bool(false)),
            ("null", []) => Fast::Lit(Value::Null),
            _ => return None,
        },
        Term::Path(head, path) => {
            let head = boxed(head)?;
            let steps = path
                .0
                .iter()
                .map(|(part, opt)| match part {
                    Part::Index(i) => Some((index(i)?, matches!(opt, Opt::Optional))),
                    Part::Range(..) => None,
                })
                .collect::<Option<_>>()?;
            Fast::Path(head, steps)
        }
        _ => return None,
    })
}

/// jaq reads integer literals that fit a machine integer as integers and everything else
/// as decimals (floats); big integers stay with jaq.
fn number_literal(text: &str) -> Option<Value<'static>> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Value::Int(i));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<f64>().ok().map(Value::Float)
}

/// The text of a string literal without interpolation, escapes resolved.
fn literal_text(parts: &[StrPart<&str, Term<&str>>]) -> Option<String> {
    let mut text = String::new();
    for part in parts {
        match part {
            StrPart::Str(s) => text.push_str(s),
            StrPart::Char(c) => text.push(*c),
            StrPart::Term(_) => return None,
        }
    }
    Some(text)
}

fn pieces(parts: &[StrPart<&str, Term<&str>>]) -> Option<Vec<Piece>> {
    parts
        .iter()
        .map(|part| {
            Some(match part {
                StrPart::Str(s) => Piece::Lit((*s).into()),
                StrPart::Char(c) => Piece::Lit(c.to_string().into()),
                StrPart::Term(t) => Piece::Expr(compile_term(t)?),
            })
        })
        .collect()
}

fn index(term: &Term<&str>) -> Option<Index> {
    Some(match term {
        Term::Str(None, parts) => match literal_text(parts) {
            Some(name) => Index::Field(name.into()),
            None => Index::Expr(compile_term(term)?),
        },
        Term::Num(n) => match number_literal(n)? {
            Value::Int(i) => Index::Elem(i),
            other => Index::Expr(Fast::Lit(other)),
        },
        other => Index::Expr(compile_term(other)?),
    })
}

fn object_entry(key: &Term<&str>, value: Option<&Term<&str>>) -> Option<(Key, Fast)> {
    let key_fast = match key {
        Term::Str(None, parts) => match literal_text(parts) {
            Some(name) => Key::Lit(name.into()),
            None => Key::Expr(compile_term(key)?),
        },
        // `{$x}` and `{@fmt "..."}` stay with jaq.
        Term::Str(Some(_), _) | Term::Var(_) => return None,
        other => Key::Expr(compile_term(other)?),
    };
    let value = match value {
        Some(v) => compile_term(v)?,
        // `{a}` is `{a: .a}`.
        None => Fast::Path(Box::new(Fast::Id), Vec::from([(index(key)?, false)])),
    };
    Some((key_fast, value))
}
