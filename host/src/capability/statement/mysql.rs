//! MySQL and MariaDB statements read by a lexer that follows the server's own
//! rules for what is code: `#` and `-- ` comments run to the line's end,
//! `/* */` comments do not nest, and `/*! … */` and `/*M! … */` comments are
//! code (the server runs them, so they are read as code here too). Strings and
//! quoted names are skipped whole, with backslash escapes and doubled quotes.
//!
//! No parser of MariaDB's grammar is published for Rust that runs executable
//! comments as the server does (sqlparser reads them as comments, the very
//! mismatch a read-only check must not have), so the words are classified
//! here and the server's read-only transaction stands behind them.

use super::{has_side_effects, Problem};

/// A piece of code: a word (a keyword or a bare name) or one punctuation character.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Punct(char),
    /// A string or a quoted name: never a keyword.
    Quoted,
}

/// Splits a statement into the tokens the server reads; `;` ends a statement.
fn tokens(sql: &str) -> Result<Vec<Token>, Problem> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            _ if c.is_whitespace() => i += 1,
            '#' => i = line_end(&chars, i),
            '-' if next == Some('-') && chars.get(i + 2).is_none_or(|c| c.is_whitespace() || c.is_control()) => {
                i = line_end(&chars, i)
            }
            '/' if next == Some('*') => {
                // `/*!`, `/*!50001` and `/*M!` open code; the closing `*/` is then skipped as a comment.
                let rest: String = chars[i + 2..chars.len().min(i + 4)].iter().collect();
                if rest.starts_with('!') || rest.starts_with("M!") {
                    i += if rest.starts_with('!') { 3 } else { 4 };
                    while chars.get(i).is_some_and(char::is_ascii_digit) {
                        i += 1;
                    }
                    continue;
                }
                match (i + 2..chars.len().saturating_sub(1)).find(|&j| chars[j] == '*' && chars[j + 1] == '/') {
                    Some(j) => i = j + 2,
                    None => return Err(Problem::Unparsed("a comment is not closed".into())),
                }
            }
            // The end of an executable comment.
            '*' if next == Some('/') => i += 2,
            '\'' | '"' | '`' => {
                i = quoted_end(&chars, i)?;
                out.push(Token::Quoted);
            }
            _ if c.is_alphanumeric() || c == '_' || c == '$' => {
                let start = i;
                while chars.get(i).is_some_and(|c| c.is_alphanumeric() || *c == '_' || *c == '$') {
                    i += 1;
                }
                out.push(Token::Word(chars[start..i].iter().collect::<String>().to_ascii_uppercase()));
            }
            _ => {
                out.push(Token::Punct(c));
                i += 1;
            }
        }
    }
    Ok(out)
}

fn line_end(chars: &[char], from: usize) -> usize {
    (from..chars.len()).find(|&j| chars[j] == '\n').map_or(chars.len(), |j| j + 1)
}

/// Past a string or quoted name opened at `from`: `\` escapes in strings, the quote doubled in all.
fn quoted_end(chars: &[char], from: usize) -> Result<usize, Problem> {
    let quote = chars[from];
    let mut i = from + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote && chars.get(i + 1) == Some(&quote) => i += 2,
            c if c == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(Problem::Unparsed("a quoted string or name is not closed".into()))
}

/// Statements a read-only grant sends, by their first word.
const READS: &[&str] = &["SELECT", "WITH", "SHOW", "EXPLAIN", "DESCRIBE", "DESC", "VALUES", "TABLE"];

/// First words of transaction control: `LOCK TABLES` and `UNLOCK TABLES` commit the open transaction too.
const TRANSACTION: &[&str] = &["BEGIN", "START", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "XA", "LOCK", "UNLOCK"];

/// Checks one statement against a grant, read-only or not.
pub(super) fn check(statement: &str, readonly: bool) -> Result<(), Problem> {
    let all = tokens(statement)?;
    // A statement ends at the first `;`; anything after it is a second statement.
    let end = all.iter().position(|t| *t == Token::Punct(';')).unwrap_or(all.len());
    if all[end..].iter().skip(1).any(|t| *t != Token::Punct(';')) {
        return Err(Problem::Several);
    }
    let code = &all[..end];
    let words: Vec<&str> = code
        .iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some(w.as_str()),
            _ => None,
        })
        .collect();
    let Some(&first) = words.first() else {
        return Err(Problem::Unparsed("it holds no statement".into()));
    };
    if TRANSACTION.contains(&first) {
        return Err(Problem::Transaction(first.to_string()));
    }
    if first == "SET" && words.iter().any(|w| *w == "AUTOCOMMIT") {
        return Err(Problem::Transaction("SET autocommit".into()));
    }
    if first == "USE" {
        return Err(Problem::Use);
    }
    if !readonly {
        return Ok(());
    }
    if !READS.contains(&first) {
        return Err(Problem::NotRead(first.to_string()));
    }
    for (i, t) in code.iter().enumerate() {
        let Token::Word(w) = t else { continue };
        let after = |n: usize| code.get(i + n);
        match w.as_str() {
            "INTO" => return Err(Problem::Writes("selects INTO a file or variables".into())),
            "ANALYZE" => return Err(Problem::NotRead("ANALYZE".into())),
            "UPDATE" if i > 0 && code[i - 1] == Token::Word("FOR".into()) => {
                return Err(Problem::Writes("locks rows (FOR UPDATE)".into()))
            }
            "LOCK" => return Err(Problem::Writes("locks rows (LOCK IN SHARE MODE)".into())),
            "INSERT" | "UPDATE" | "DELETE" | "REPLACE" => {
                return Err(Problem::Writes(format!("holds a data-modifying `{w}`")))
            }
            "NEXT" if after(1) == Some(&Token::Word("VALUE".into())) => {
                return Err(Problem::Function("NEXT VALUE FOR".into()))
            }
            _ if after(1) == Some(&Token::Punct('(')) && has_side_effects(w) => {
                return Err(Problem::Function(w.to_ascii_lowercase()))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ro(sql: &str) -> Result<(), Problem> {
        check(sql, true)
    }

    #[test]
    fn reading_statements_pass_a_read_only_grant() {
        for sql in [
            "SELECT 1",
            "select * from t where a = ?",
            "SHOW TABLES",
            "DESCRIBE t",
            "(SELECT 1) UNION (SELECT 2)",
            "SELECT 'INSERT INTO x; DELETE' AS s",
            "SELECT `update` FROM t",
            "SELECT 1 -- DELETE\n",
            "SELECT 1 # INSERT",
            "SELECT 1 /* COMMIT */;",
            "SELECT 'it''s', \"a \\\" b\" FROM t",
        ] {
            assert_eq!(ro(sql), Ok(()), "{sql}");
        }
    }

    #[test]
    fn executable_comments_are_code_as_the_server_runs_them() {
        assert!(matches!(ro("/*! DELETE FROM t */"), Err(Problem::NotRead(w)) if w == "DELETE"));
        assert!(matches!(ro("/*!50001 SET autocommit=1 */"), Err(Problem::Transaction(_))));
        assert!(matches!(ro("SELECT 1 /*M! , GET_LOCK('a', 0) */"), Err(Problem::Function(_))));
        assert!(matches!(ro("SELECT 1 /*! INTO OUTFILE '/tmp/x' */"), Err(Problem::Writes(_))));
        assert!(matches!(check("/*! COMMIT */", false), Err(Problem::Transaction(_))));
        // A plain comment hides nothing either way: its content is never code.
        assert_eq!(ro("/* DELETE */ SELECT 1"), Ok(()));
        // `--` without a space after it is two minus signs, not a comment.
        assert!(matches!(ro("SELECT 1 --1\n; DELETE FROM t"), Err(Problem::Several)));
    }

    #[test]
    fn writes_locks_and_files_are_refused_on_a_read_only_grant() {
        for sql in [
            "DELETE FROM t",
            "SET SESSION TRANSACTION READ WRITE",
            "DO GET_LOCK('a', 0)",
            "CALL p()",
            "HANDLER t OPEN",
            "ANALYZE SELECT 1",
            "CREATE TEMPORARY TABLE x (a int)",
        ] {
            assert!(matches!(ro(sql), Err(Problem::NotRead(_))), "{sql}: {:?}", ro(sql));
        }
        for sql in [
            "SELECT * FROM t INTO OUTFILE '/tmp/x'",
            "SELECT * INTO DUMPFILE '/tmp/x' FROM t",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t LOCK IN SHARE MODE",
            "WITH x AS (SELECT 1) DELETE FROM t",
        ] {
            assert!(matches!(ro(sql), Err(Problem::Writes(_))), "{sql}: {:?}", ro(sql));
        }
        for sql in ["SELECT GET_LOCK('a', 0)", "SELECT load_file('/etc/passwd')", "SELECT NEXT VALUE FOR s"] {
            assert!(matches!(ro(sql), Err(Problem::Function(_))), "{sql}: {:?}", ro(sql));
        }
    }

    #[test]
    fn read_write_grants_refuse_transaction_control_use_and_batches_only() {
        assert_eq!(check("INSERT INTO t VALUES (1)", false), Ok(()));
        assert_eq!(check("SET NAMES utf8mb4", false), Ok(()));
        assert!(matches!(check("LOCK TABLES t WRITE", false), Err(Problem::Transaction(_))));
        assert!(matches!(check("use other", false), Err(Problem::Use)));
        assert!(matches!(check("SELECT 1; SELECT 2", false), Err(Problem::Several)));
        assert!(matches!(check("SELECT 'open", false), Err(Problem::Unparsed(_))));
    }
}
