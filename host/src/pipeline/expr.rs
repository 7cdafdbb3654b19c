//! Expressions: `${{ env.X }}`, `${{ steps.<id>.outputs.<name> }}`,
//! `${{ entity }}`, `${{ environment }}` in strings, and conditions for `if:`
//! (`success()`, `failure()`, `always()`, `==`, `!=`, `&&`, `||`, `!`).

use std::fmt;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `'text'`.
    Str(String),
    /// `true` / `false`.
    Bool(bool),
    /// A dotted name: `env.REGION`, `steps.sync.outputs.updated`.
    Ref(Vec<String>),
    /// `success()`, `failure()`, `always()`, `cancelled()`.
    Call(String),
    /// `!e`.
    Not(Box<Expr>),
    /// `a == b`, `a != b`, `a && b`, `a || b`.
    Binary(Op, Box<Expr>, Box<Expr>),
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `&&`
    And,
    /// `||`
    Or,
}

/// The status functions `if:` may call.
pub const STATUS_FUNCTIONS: &[&str] = &["success", "failure", "always", "cancelled"];

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Str(String),
    Ident(String),
    Op(&'static str),
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Str(s) => write!(f, "'{s}'"),
            Token::Ident(s) => f.write_str(s),
            Token::Op(s) => f.write_str(s),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let start = i + 1;
            let end = (start..chars.len()).find(|&j| chars[j] == '\'').ok_or("unterminated string")?;
            tokens.push(Token::Str(chars[start..end].iter().collect()));
            i = end + 1;
        } else if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | '-' | '.')) {
                i += 1;
            }
            tokens.push(Token::Ident(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let op = ["==", "!=", "&&", "||"].into_iter().find(|o| *o == two);
            match (op, c) {
                (Some(o), _) => {
                    tokens.push(Token::Op(o));
                    i += 2;
                }
                (None, '!') => {
                    tokens.push(Token::Op("!"));
                    i += 1;
                }
                (None, '(') | (None, ')') => {
                    tokens.push(Token::Op(if c == '(' { "(" } else { ")" }));
                    i += 1;
                }
                _ => return Err(format!("unexpected character `{c}`")),
            }
        }
    }
    Ok(tokens)
}

/// Longest expression, in tokens, and deepest nesting of `(` and `!`: evaluation recurses over the
/// tree, so a pathological `if:` must be refused, not overflow the stack.
const MAX_TOKENS: usize = 1000;
const MAX_DEPTH: usize = 64;

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn eat(&mut self, op: &str) -> bool {
        let found = matches!(self.peek(), Some(Token::Op(o)) if *o == op);
        if found {
            self.pos += 1;
        }
        found
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.eat("||") {
            left = Expr::Binary(Op::Or, Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.equality()?;
        while self.eat("&&") {
            left = Expr::Binary(Op::And, Box::new(left), Box::new(self.equality()?));
        }
        Ok(left)
    }

    fn equality(&mut self) -> Result<Expr, String> {
        let left = self.unary()?;
        if self.eat("==") {
            return Ok(Expr::Binary(Op::Eq, Box::new(left), Box::new(self.unary()?)));
        }
        if self.eat("!=") {
            return Ok(Expr::Binary(Op::Ne, Box::new(left), Box::new(self.unary()?)));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if matches!(self.peek(), Some(Token::Op("!" | "("))) {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(format!("the expression nests `(` and `!` more than {MAX_DEPTH} deep"));
            }
            let inner = self.nested();
            self.depth -= 1;
            return inner;
        }
        self.operand()
    }

    /// `!x` or `(x)`.
    fn nested(&mut self) -> Result<Expr, String> {
        if self.eat("!") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        self.eat("(");
        let inner = self.or()?;
        if !self.eat(")") {
            return Err("missing `)`".into());
        }
        Ok(inner)
    }

    fn operand(&mut self) -> Result<Expr, String> {
        match self.tokens.get(self.pos).cloned() {
            Some(Token::Str(s)) => {
                self.pos += 1;
                Ok(Expr::Str(s))
            }
            Some(Token::Ident(name)) => {
                self.pos += 1;
                if self.eat("(") {
                    if !self.eat(")") {
                        return Err(format!("`{name}()` takes no arguments"));
                    }
                    return Ok(Expr::Call(name));
                }
                match name.as_str() {
                    "true" => Ok(Expr::Bool(true)),
                    "false" => Ok(Expr::Bool(false)),
                    _ => Ok(Expr::Ref(name.split('.').map(str::to_string).collect())),
                }
            }
            Some(other) => Err(format!("unexpected `{other}`")),
            None => Err("expression ends too early".into()),
        }
    }
}

/// Parses one expression (the inside of `${{ }}`, or a bare `if:` condition).
pub fn parse(text: &str) -> Result<Expr, String> {
    let mut parser = Parser { tokens: tokenize(text)?, pos: 0, depth: 0 };
    if parser.tokens.is_empty() {
        return Err("empty expression".into());
    }
    if parser.tokens.len() > MAX_TOKENS {
        return Err(format!("the expression is longer than {MAX_TOKENS} tokens"));
    }
    let expr = parser.or()?;
    match parser.peek() {
        Some(t) => Err(format!("unexpected `{t}` after the expression")),
        None => Ok(expr),
    }
}

/// The `${{ ... }}` parts of a string: byte offset and parsed expression.
pub fn template(text: &str) -> Result<Vec<(usize, Expr)>, (usize, String)> {
    let mut found = Vec::new();
    let mut rest = 0;
    while let Some(start) = text[rest..].find("${{").map(|i| i + rest) {
        let inner_start = start + 3;
        let end = text[inner_start..].find("}}").map(|i| i + inner_start).ok_or((start, "missing `}}`".to_string()))?;
        let expr = parse(&text[inner_start..end]).map_err(|e| (start, e))?;
        found.push((start, expr));
        rest = end + 2;
    }
    Ok(found)
}

/// Replaces each `${{ <reference> }}` in every string of a JSON value for
/// which `lookup` knows the reference; anything else stays as written.
pub fn substitute(value: &serde_json::Value, lookup: &impl Fn(&[&str]) -> Option<String>) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(text) => Value::String(substitute_str(text, lookup)),
        Value::Array(a) => Value::Array(a.iter().map(|v| substitute(v, lookup)).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), substitute(v, lookup))).collect()),
        other => other.clone(),
    }
}

fn substitute_str(text: &str, lookup: &impl Fn(&[&str]) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        let Some(len) = rest[start..].find("}}") else { break };
        let value = match parse(&rest[start + 3..start + len]) {
            Ok(Expr::Ref(path)) => lookup(&path.iter().map(String::as_str).collect::<Vec<_>>()),
            _ => None,
        };
        out.push_str(&rest[..start]);
        out.push_str(value.as_deref().unwrap_or(&rest[start..start + len + 2]));
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Calls `f` on every node of an expression, parents first.
fn visit<'a>(expr: &'a Expr, f: &mut impl FnMut(&'a Expr)) {
    f(expr);
    match expr {
        Expr::Not(e) => visit(e, f),
        Expr::Binary(_, a, b) => {
            visit(a, f);
            visit(b, f);
        }
        _ => {}
    }
}

/// Every dotted reference in an expression.
pub fn refs(expr: &Expr) -> Vec<&[String]> {
    let mut found = Vec::new();
    visit(expr, &mut |e| {
        if let Expr::Ref(path) = e {
            found.push(path.as_slice());
        }
    });
    found
}

/// Every function call in an expression.
pub fn calls(expr: &Expr) -> Vec<&str> {
    let mut found = Vec::new();
    visit(expr, &mut |e| {
        if let Expr::Call(name) = e {
            found.push(name.as_str());
        }
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_find_each_expression() {
        let found = template("https://${{ env.HOST }}/v1/${{ steps.a.outputs.id }}").unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0], (8, Expr::Ref(vec!["env".into(), "HOST".into()])));
        assert_eq!(found[1].1, Expr::Ref(vec!["steps".into(), "a".into(), "outputs".into(), "id".into()]));
        assert_eq!(template("x ${{ env.A").unwrap_err(), (2, "missing `}}`".to_string()));
    }

    #[test]
    fn conditions_parse_with_precedence() {
        let e = parse("failure() || environment == 'production' && !cancelled()").unwrap();
        assert_eq!(calls(&e), vec!["failure", "cancelled"]);
        assert_eq!(refs(&e), vec![&["environment".to_string()][..]]);
        assert!(matches!(e, Expr::Binary(Op::Or, _, _)));
        assert!(parse("success(").is_err());
        assert!(parse("a == ").is_err());
        assert!(parse("a b").unwrap_err().contains("unexpected `b`"));
    }

    #[test]
    fn deep_nesting_and_long_chains_are_refused_not_a_stack_overflow() {
        // Found by hand beside the `expr` fuzz target, whose inputs stay under 4 KiB: 200 000 `!`
        // or `(` overflowed the parser's stack, and a long `||` chain the evaluator's.
        for deep in ["!".repeat(200_000) + "a", "(".repeat(200_000) + "a" + &")".repeat(200_000)] {
            assert!(parse(&deep).is_err());
        }
        assert!(parse(&("!".repeat(400) + "a")).unwrap_err().contains("more than 64 deep"));
        assert!(parse(&("(".repeat(300) + "a" + &")".repeat(300))).unwrap_err().contains("more than 64 deep"));
        assert!(parse(&vec!["a"; 100_000].join(" || ")).unwrap_err().contains("longer than 1000 tokens"));
        assert!(parse(&("!".repeat(64) + "a")).is_ok() && parse(&vec!["a"; 500].join(" || ")).is_ok());
    }
}
