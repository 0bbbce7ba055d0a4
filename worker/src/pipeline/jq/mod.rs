//! jq expressions of the pipeline: common shapes run on a native fast path, everything else
//! (and every record the fast path bails out on) runs in jaq (pure; no I/O).

mod fallback;
mod fast;
#[cfg(test)]
pub(crate) mod tests;

use fallback::JaqProgram;
use fast::{Fast, Out};

use super::value::Value;

/// At most this many outputs per record and expression (guards against `repeat(.)`).
const MAX_OUTPUTS: usize = 100_000;

/// Which evaluator runs an expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExprPath {
    /// Native evaluation (jaq only for records it bails out on, e.g. errors).
    Fast,
    /// The jaq interpreter.
    Jaq,
}

impl ExprPath {
    /// True for the fast path.
    pub fn is_fast(self) -> bool {
        self == ExprPath::Fast
    }
}

/// What [`JqExpr::write_object`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Written {
    /// The output's text was appended.
    Output,
    /// The expression yields nothing for this input.
    Nothing,
    /// Not written: run the expression through [`JqExpr::for_each`] instead.
    Fallback,
    /// The record fails with this message.
    Failed(String),
}

/// A compiled jq expression.
#[derive(Debug)]
pub(crate) struct JqExpr {
    fast: Option<Vec<Fast>>,
    jaq: JaqProgram,
}

impl JqExpr {
    /// Compiles `code` with jaq (which defines what is valid) and, when it fits, the fast path.
    pub(crate) fn compile(code: &str) -> Result<Self, String> {
        let jaq = JaqProgram::compile(code)?;
        Ok(Self {
            fast: fast::compile(code),
            jaq,
        })
    }

    /// Which evaluator runs this expression.
    pub(crate) fn path(&self) -> ExprPath {
        if self.fast.is_some() {
            ExprPath::Fast
        } else {
            ExprPath::Jaq
        }
    }

    /// The first output, if any.
    pub(crate) fn first<'x>(&'x self, input: &Value<'x>) -> Result<Option<Value<'x>>, String> {
        if let Some(alternatives) = &self.fast {
            match first_fast(alternatives, input) {
                Ok(first) => return Ok(first.map(Out::into_value)),
                Err(fast::Bail::TooLarge) => return Err(too_large()),
                Err(_) => {}
            }
        }
        let mut first = None;
        self.jaq.run(input, |v| {
            first = Some(v);
            false
        })?;
        Ok(first)
    }

    /// Whether the first output is truthy (`None`: no output).
    pub(crate) fn first_truthy<'x>(&'x self, input: &Value<'x>) -> Result<Option<bool>, String> {
        if let Some(alternatives) = &self.fast {
            match first_fast(alternatives, input) {
                Ok(first) => return Ok(first.map(|out| out.into_ref_truthy())),
                Err(fast::Bail::TooLarge) => return Err(too_large()),
                Err(_) => {}
            }
        }
        let mut first = None;
        self.jaq.run(input, |v| {
            first = Some(v.is_truthy());
            false
        })?;
        Ok(first)
    }

    /// Hands every output to `sink`, in order. An evaluation error (mapped by `eval_error`)
    /// may come after some outputs were handed over.
    pub(crate) fn for_each<'x, E>(
        &'x self,
        input: Value<'x>,
        eval_error: impl FnOnce(String) -> E,
        mut sink: impl FnMut(Value<'x>) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(alternatives) = &self.fast {
            if let [single] = &alternatives[..] {
                enum One<'x> {
                    Nothing,
                    Input,
                    Value(Value<'x>),
                }
                let one = match single.eval(&input) {
                    Ok(None) => Some(One::Nothing),
                    // `select(...)` and `.` pass the input on: move it, do not copy it.
                    Ok(Some(Out::Ref(v))) if std::ptr::eq(v, &input) => Some(One::Input),
                    Ok(Some(out)) => Some(One::Value(out.into_value())),
                    Err(fast::Bail::TooLarge) => return Err(eval_error(too_large())),
                    Err(_) => None,
                };
                match one {
                    Some(One::Nothing) => return Ok(()),
                    Some(One::Input) => return sink(input),
                    Some(One::Value(v)) => return sink(v),
                    None => {}
                }
            } else {
                match all_fast(alternatives, &input) {
                    Ok(values) => return values.into_iter().try_for_each(sink),
                    Err(fast::Bail::TooLarge) => return Err(eval_error(too_large())),
                    Err(_) => {}
                }
            }
        }
        let mut sink_error = None;
        let mut count = 0;
        let result = self.jaq.run(&input, |v| {
            count += 1;
            if count > MAX_OUTPUTS {
                return false;
            }
            match sink(v) {
                Ok(()) => true,
                Err(e) => {
                    sink_error = Some(e);
                    false
                }
            }
        });
        if let Some(e) = sink_error {
            return Err(e);
        }
        match result {
            Err(message) => Err(eval_error(message)),
            Ok(()) if count > MAX_OUTPUTS => Err(eval_error(format!(
                "the expression yielded more than {MAX_OUTPUTS} outputs"
            ))),
            Ok(()) => Ok(()),
        }
    }

    /// Appends the JSON text of the expression's output when it is an object construction
    /// with literal keys on the fast path (`{user: .user, n: 1}`), without building the object.
    /// On anything but [`Written::Output`], `out` may hold a partial text the caller drops.
    pub(crate) fn write_object(&self, input: &Value<'_>, out: &mut Vec<u8>) -> Written {
        let Some([single]) = self.fast.as_deref() else {
            return Written::Fallback;
        };
        let Some(entries) = fast::literal_object(single) else {
            return Written::Fallback;
        };
        match fast::write_object(entries, input, out) {
            Ok(true) => Written::Output,
            Ok(false) => Written::Nothing,
            Err(fast::Bail::TooLarge) => Written::Failed(too_large()),
            Err(_) => Written::Fallback,
        }
    }

    /// Whether [`JqExpr::write_object`] can apply.
    pub(crate) fn writes_objects(&self) -> bool {
        matches!(self.fast.as_deref(), Some([single]) if fast::literal_object(single).is_some())
    }

    /// Forgets the fast path, so jaq runs every record (for comparisons).
    #[cfg(test)]
    pub(crate) fn disable_fast_path(&mut self) {
        self.fast = None;
    }

    /// The fast path's outputs alone (`None` when the expression is not fast).
    #[cfg(test)]
    pub(crate) fn eval_fast_only<'x>(
        &'x self,
        input: &Value<'x>,
    ) -> Option<Result<Vec<Value<'x>>, fast::Bail>> {
        self.fast
            .as_ref()
            .map(|alternatives| all_fast(alternatives, input))
    }

    /// jaq's outputs alone.
    #[cfg(test)]
    pub(crate) fn eval_jaq_only(&self, input: &Value<'_>) -> Result<Vec<Value<'static>>, String> {
        let mut outputs = Vec::new();
        self.jaq.run(input, |v| {
            outputs.push(v);
            true
        })?;
        Ok(outputs)
    }
}

fn too_large() -> String {
    format!(
        "string repetition would produce more than {} MiB",
        fast::MAX_REPEAT_BYTES / (1024.0 * 1024.0)
    )
}

impl Out<'_, '_> {
    fn into_ref_truthy(self) -> bool {
        match self {
            Out::Ref(v) => v.is_truthy(),
            Out::Own(v) => v.is_truthy(),
        }
    }
}

/// The first output of the alternatives (`a, b`): later ones run only if earlier ones yield
/// nothing, as jq's lazy evaluation does.
fn first_fast<'v, 'x: 'v>(
    alternatives: &'x [Fast],
    input: &'v Value<'x>,
) -> Result<Option<Out<'v, 'x>>, fast::Bail> {
    for alternative in alternatives {
        if let Some(out) = alternative.eval(input)? {
            return Ok(Some(out));
        }
    }
    Ok(None)
}

fn all_fast<'x>(alternatives: &'x [Fast], input: &Value<'x>) -> Result<Vec<Value<'x>>, fast::Bail> {
    let mut values = Vec::with_capacity(alternatives.len());
    for alternative in alternatives {
        if let Some(out) = alternative.eval(input)? {
            values.push(out.into_value());
        }
    }
    Ok(values)
}
