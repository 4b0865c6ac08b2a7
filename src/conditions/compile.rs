//! Compiling a condition when the config loads: CEL syntax, then the checks the `cel`
//! crate does not make (it has no type checker): every free variable is `request`,
//! `agent` or `tool`, every field read off them is one the request path provides, and a
//! literal result is a boolean. What is left — the types of values, the functions
//! applied to them, a field a body lacks — is found when the condition runs, and an
//! error there evaluates to the safe side (see [`super::eval`]).

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::{Env, Program};
use std::sync::{Arc, OnceLock};

/// The fields of `request` a condition may read.
pub const REQUEST_FIELDS: &[&str] = &["method", "path", "params", "query", "headers", "body"];
/// The fields of `agent`.
pub const AGENT_FIELDS: &[&str] = &["id", "tenant", "owner"];
/// The fields of `tool`.
pub const TOOL_FIELDS: &[&str] = &["name", "risk"];

/// Which parts of the request a condition reads (the rest is not built for it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub body: bool,
    pub params: bool,
    pub query: bool,
    pub headers: bool,
}

impl Needs {
    pub fn union(self, o: Needs) -> Needs {
        Needs {
            body: self.body || o.body,
            params: self.params || o.params,
            query: self.query || o.query,
            headers: self.headers || o.headers,
        }
    }
    fn all() -> Needs {
        Needs {
            body: true,
            params: true,
            query: true,
            headers: true,
        }
    }
}

/// A compiled condition.
pub struct Condition {
    /// The expression as written in the config (what deny answers and audit records name).
    pub text: Arc<str>,
    pub needs: Needs,
    /// The top-level body keys it reads (`request.body.amount` → `amount`); `None` when
    /// it reads the body as a whole (`size(request.body)`, `request.body[k]`). Only
    /// these are built as CEL values; the rest of the body is still checked.
    pub body_keys: Option<Vec<String>>,
    program: Program,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Condition({:?})", self.text)
    }
}

impl Condition {
    pub(super) fn program(&self) -> &Program {
        &self.program
    }
}

/// The CEL environment conditions are compiled and run in: the standard library.
pub(super) fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib()))
}

/// Compiles `text`; the error is CEL's own message, or what the static checks found.
pub fn compile(text: &str) -> Result<Condition, String> {
    if text.trim().is_empty() {
        return Err("the condition is empty".into());
    }
    let program = env()
        .compile(text)
        .map_err(|e| format!("CEL: {}", e.to_string().replace('\n', "; ")))?;
    let mut needs = Needs::default();
    let mut bound = Vec::new();
    let mut keys = Keys::default();
    check(program.expression(), &mut bound, &mut needs, &mut keys)?;
    if let Expr::Literal(l) = &program.expression().expr {
        if !matches!(l, LiteralValue::Boolean(_)) {
            return Err("a condition must be true or false, not a constant value".into());
        }
    }
    let mut names = keys.names;
    names.sort();
    names.dedup();
    Ok(Condition {
        text: text.into(),
        needs,
        body_keys: (!keys.whole).then_some(names),
        program,
    })
}

/// The body keys a condition reads.
#[derive(Default)]
struct Keys {
    whole: bool,
    names: Vec<String>,
}

/// `request.body.FIELD` (with `request` free): `FIELD`.
fn body_field<'a>(s: &'a cel::common::ast::SelectExpr, bound: &[String]) -> Option<&'a str> {
    let Expr::Select(inner) = &s.operand.expr else {
        return None;
    };
    let Expr::Ident(root) = &inner.operand.expr else {
        return None;
    };
    (root == "request" && inner.field == "body" && !inner.test && !bound.iter().any(|b| b == root))
        .then_some(s.field.as_str())
}

/// Walks the expression: free variables, the fields read off them, and what they need.
fn check(
    e: &IdedExpr,
    bound: &mut Vec<String>,
    needs: &mut Needs,
    keys: &mut Keys,
) -> Result<(), String> {
    match &e.expr {
        Expr::Ident(name) => {
            if bound.iter().any(|b| b == name) {
                return Ok(());
            }
            match name.as_str() {
                // The whole object is read (`request == …`, `"body" in request`).
                "request" => {
                    *needs = needs.union(Needs::all());
                    keys.whole = true;
                }
                "agent" | "tool" => {}
                other => {
                    return Err(format!(
                    "unknown variable `{other}`: a condition reads `request`, `agent` and `tool`"
                ))
                }
            }
            Ok(())
        }
        Expr::Select(s) => {
            if let Some(field) = body_field(s, bound) {
                needs.body = true;
                keys.names.push(field.to_string());
                return Ok(());
            }
            if let Expr::Ident(root) = &s.operand.expr {
                if !bound.iter().any(|b| b == root) {
                    let fields = match root.as_str() {
                        "request" => REQUEST_FIELDS,
                        "agent" => AGENT_FIELDS,
                        "tool" => TOOL_FIELDS,
                        _ => return check(&s.operand, bound, needs, keys),
                    };
                    if !fields.contains(&s.field.as_str()) {
                        return Err(format!(
                            "`{root}` has no field `{}` (it has {})",
                            s.field,
                            fields.join(", ")
                        ));
                    }
                    if root == "request" {
                        match s.field.as_str() {
                            "body" => {
                                needs.body = true;
                                keys.whole = true;
                            }
                            "params" => needs.params = true,
                            "query" => needs.query = true,
                            "headers" => needs.headers = true,
                            _ => {}
                        }
                    }
                    return Ok(());
                }
            }
            check(&s.operand, bound, needs, keys)
        }
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                check(t, bound, needs, keys)?;
            }
            c.args.iter().try_for_each(|a| check(a, bound, needs, keys))
        }
        Expr::Comprehension(c) => {
            check(&c.iter_range, bound, needs, keys)?;
            check(&c.accu_init, bound, needs, keys)?;
            let mark = bound.len();
            bound.push(c.iter_var.clone());
            if let Some(v) = &c.iter_var2 {
                bound.push(v.clone());
            }
            bound.push(c.accu_var.clone());
            let r = [&c.loop_cond, &c.loop_step, &c.result]
                .into_iter()
                .try_for_each(|x| check(x, bound, needs, keys));
            bound.truncate(mark);
            r
        }
        Expr::List(l) => l
            .elements
            .iter()
            .try_for_each(|x| check(x, bound, needs, keys)),
        Expr::Map(m) => m.entries.iter().try_for_each(|en| match &en.expr {
            EntryExpr::MapEntry(me) => {
                check(&me.key, bound, needs, keys)?;
                check(&me.value, bound, needs, keys)
            }
            EntryExpr::StructField(f) => check(&f.value, bound, needs, keys),
        }),
        Expr::Struct(s) => s.entries.iter().try_for_each(|en| match &en.expr {
            EntryExpr::MapEntry(me) => {
                check(&me.key, bound, needs, keys)?;
                check(&me.value, bound, needs, keys)
            }
            EntryExpr::StructField(f) => check(&f.value, bound, needs, keys),
        }),
        Expr::Literal(_) | Expr::Unspecified => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_time_checks() {
        let c = compile("request.body.amount > 100 || has(request.body.coupon)").unwrap();
        assert!(c.needs.body && !c.needs.query);
        assert_eq!(c.body_keys, Some(vec!["amount".into(), "coupon".into()]));
        for whole in ["size(request.body) > 2", "request.body['amount'] > 1"] {
            assert_eq!(compile(whole).unwrap().body_keys, None, "{whole}");
        }
        let c = compile("'true' in request.query.force").unwrap();
        assert!(c.needs.query && !c.needs.body);
        let c = compile("agent.tenant == 'acme' && tool.risk == 'high'").unwrap();
        assert_eq!(c.needs, Needs::default());
        // A comprehension's variable is not a free variable.
        let c = compile("request.body.items.exists(i, i.qty > 10)").unwrap();
        assert!(c.needs.body);
        // The whole request object: everything is built.
        assert!(compile("'body' in request").unwrap().needs.body);
        for (bad, says) in [
            ("request.body.amount >", "CEL"),
            ("requst.body.amount > 1", "unknown variable `requst`"),
            ("request.bdy.amount > 1", "no field `bdy`"),
            ("agent.name == 'x'", "no field `name`"),
            ("42", "true or false"),
            ("  ", "empty"),
        ] {
            let e = compile(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
