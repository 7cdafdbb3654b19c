//! PostgreSQL statements read by PostgreSQL's own parser (`pg_query` embeds
//! it): nested comments, dollar quotes and every keyword are seen as the
//! server sees them. The parse tree is walked whole, as JSON, so no node kind
//! is skipped by a walker that only knows some of them.

use super::{has_side_effects, Problem};
use serde_json::Value;

/// Statement kinds a read-only grant sends: they read, once their inner nodes are checked.
const READS: &[&str] = &["SelectStmt", "VariableShowStmt", "ExplainStmt"];

/// Statement nodes that change data, wherever they appear (a `WITH` may hold one).
const WRITES: &[&str] = &["InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"];

/// Checks one statement against a grant, read-only or not.
pub(super) fn check(statement: &str, readonly: bool) -> Result<(), Problem> {
    let parsed =
        pg_query::parse(statement, pg_query::ParserOptions::DEFAULT).map_err(|e| Problem::Unparsed(parse_error(e)))?;
    let tree = serde_json::to_value(&parsed.protobuf).map_err(|e| Problem::Unparsed(e.to_string()))?;
    let stmts = tree.get("stmts").and_then(Value::as_array).cloned().unwrap_or_default();
    let [stmt] = stmts.as_slice() else {
        return match stmts.len() {
            0 => Err(Problem::Unparsed("it holds no statement".into())),
            _ => Err(Problem::Several),
        };
    };
    let Some((kind, node)) = stmt.pointer("/stmt/node").and_then(Value::as_object).and_then(|o| o.iter().next()) else {
        return Err(Problem::Unparsed("it holds no statement".into()));
    };
    if kind == "TransactionStmt" {
        return Err(Problem::Transaction(keyword(statement)));
    }
    if !readonly {
        return Ok(());
    }
    if !READS.contains(&kind.as_str()) {
        return Err(Problem::NotRead(keyword(statement)));
    }
    if kind == "ExplainStmt" {
        match node.pointer("/query/node").and_then(Value::as_object).and_then(|o| o.keys().next()) {
            Some(inner) if inner == "SelectStmt" => {}
            _ => return Err(Problem::NotRead("EXPLAIN of a statement that is not a SELECT".into())),
        }
    }
    walk(node)
}

/// Looks through every node under a reading statement for what writes or outlives the transaction.
fn walk(node: &Value) -> Result<(), Problem> {
    match node {
        Value::Object(fields) => {
            for (key, value) in fields {
                if WRITES.contains(&key.as_str()) {
                    return Err(Problem::Writes(format!("holds a data-modifying `{}`", verb(key))));
                }
                match key.as_str() {
                    "into_clause" if !value.is_null() => {
                        return Err(Problem::Writes("selects INTO a new table".into()));
                    }
                    "locking_clause" if value.as_array().is_some_and(|l| !l.is_empty()) => {
                        return Err(Problem::Writes("locks rows (FOR UPDATE/SHARE)".into()));
                    }
                    "FuncCall" => {
                        if let Some(name) = function_name(value) {
                            if has_side_effects(&name) {
                                return Err(Problem::Function(name));
                            }
                        }
                    }
                    _ => {}
                }
                walk(value)?;
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(walk),
        _ => Ok(()),
    }
}

/// A call's function name without its schema (`pg_catalog.lo_create` → `lo_create`).
fn function_name(call: &Value) -> Option<String> {
    let parts = call.get("funcname")?.as_array()?;
    parts.last()?.pointer("/node/String/sval")?.as_str().map(str::to_string)
}

fn verb(node: &str) -> &'static str {
    match node {
        "InsertStmt" => "INSERT",
        "UpdateStmt" => "UPDATE",
        "DeleteStmt" => "DELETE",
        _ => "MERGE",
    }
}

/// The statement's first word as written, for messages.
fn keyword(statement: &str) -> String {
    match pg_query::scan(statement) {
        Ok(scan) => scan
            .tokens
            .iter()
            .find(|t| {
                t.token != pg_query::protobuf::Token::SqlComment as i32
                    && t.token != pg_query::protobuf::Token::CComment as i32
            })
            .and_then(|t| statement.get(t.start as usize..t.end as usize))
            .map(str::to_ascii_uppercase)
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn parse_error(e: pg_query::Error) -> String {
    match e {
        pg_query::Error::Parse(m) => format!("PostgreSQL's parser refuses it: {m}"),
        other => other.to_string(),
    }
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
            "select * from t where a = $1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "(SELECT 1) UNION (SELECT 2)",
            "VALUES (1), (2)",
            "TABLE t",
            "SHOW search_path",
            "EXPLAIN SELECT * FROM t",
            "SELECT lower(name), count(*) FROM t GROUP BY 1",
            "/* a comment */ SELECT 1 -- and another",
        ] {
            assert_eq!(ro(sql), Ok(()), "{sql}");
        }
    }

    #[test]
    fn a_nested_comment_hides_nothing_from_the_parser() {
        // PostgreSQL nests comments: what follows the outer `*/` is the statement.
        assert!(matches!(ro("/* /* */ SELECT */ SET TRANSACTION READ WRITE"), Err(Problem::NotRead(_))));
        assert!(matches!(ro("/* /* */ SELECT */ COMMIT"), Err(Problem::Transaction(_))));
        assert!(matches!(check("/* /* */ SELECT */ COMMIT", false), Err(Problem::Transaction(_))));
        assert!(matches!(ro("/* /* */ SELECT */ INSERT INTO t VALUES (1)"), Err(Problem::NotRead(_))));
    }

    #[test]
    fn writes_hidden_in_reads_are_refused() {
        assert!(matches!(ro("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"), Err(Problem::Writes(_))));
        assert!(matches!(ro("SELECT * INTO t2 FROM t"), Err(Problem::Writes(_))));
        assert!(matches!(ro("SELECT * FROM t FOR UPDATE"), Err(Problem::Writes(_))));
        assert!(matches!(ro("EXPLAIN ANALYZE DELETE FROM t"), Err(Problem::NotRead(_))));
    }

    #[test]
    fn side_effecting_functions_are_refused_wherever_they_are_called() {
        for sql in [
            "SELECT lo_create(0)",
            "SELECT pg_catalog.pg_advisory_lock(1)",
            "SELECT 1 WHERE pg_try_advisory_lock(1)",
            "SELECT pg_notify('c', 'x')",
            "SELECT set_config('default_transaction_read_only', 'off', false)",
            "SELECT * FROM pg_create_physical_replication_slot('s')",
            "SELECT (SELECT pg_terminate_backend(pid) FROM pg_stat_activity LIMIT 1)",
            "SELECT query_to_xml('select 1', true, true, '')",
            "SELECT dblink_exec('host=x', 'DELETE FROM t')",
            "SELECT nextval('s')",
            "SELECT ARRAY[lo_export(1, '/tmp/x')]",
        ] {
            assert!(matches!(ro(sql), Err(Problem::Function(_))), "{sql}: {:?}", ro(sql));
        }
    }

    #[test]
    fn everything_else_is_refused_on_a_read_only_grant_and_parse_errors_are_named() {
        for sql in [
            "SET default_transaction_read_only = off",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
            "RESET ALL",
            "DO $$ BEGIN DELETE FROM t; END $$",
            "PREPARE p AS DELETE FROM t",
            "EXECUTE p",
            "COPY t TO PROGRAM 'id'",
            "CREATE TEMP TABLE x (a int)",
            "LISTEN c",
            "DECLARE c CURSOR FOR SELECT 1",
            "CALL p()",
        ] {
            assert!(matches!(ro(sql), Err(Problem::NotRead(_))), "{sql}: {:?}", ro(sql));
        }
        assert!(matches!(ro("SELECT 1; DELETE FROM t"), Err(Problem::Several)));
        assert!(matches!(ro("SELEC 1"), Err(Problem::Unparsed(m)) if m.contains("syntax error")));
        assert_eq!(check("INSERT INTO t VALUES (1)", false), Ok(()));
        assert_eq!(check("SET search_path = app", false), Ok(()));
        assert!(matches!(check("BEGIN", false), Err(Problem::Transaction(k)) if k == "BEGIN"));
        assert!(matches!(check("savepoint a", false), Err(Problem::Transaction(k)) if k == "SAVEPOINT"));
    }
}
