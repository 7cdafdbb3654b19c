//! What a grant lets a plugin's statement do, decided by each engine's own
//! grammar: PostgreSQL's parser itself (through `pg_query`) and a lexer that
//! follows MariaDB's comment rules, executable comments included. The check
//! is the first of three walls on a read-only grant; the session opened
//! read-only and every transaction ended with `ROLLBACK` are the others, so a
//! statement this check misreads still meets the server's read-only mode.

mod mysql;
mod postgres;

use super::database::{DatabaseGrant, Engine};

/// Why a grant refuses a statement before it is sent, or `None` when it may go.
pub fn refusal(grant: &DatabaseGrant, statement: &str) -> Option<String> {
    let found = match grant.location.engine {
        Engine::Postgres => postgres::check(statement, grant.readonly),
        Engine::Mysql => mysql::check(statement, grant.readonly),
    };
    found.err().map(|problem| problem.said(&grant.name))
}

/// What is wrong with a statement, for the grant named in the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Problem {
    /// The engine's grammar does not read it.
    Unparsed(String),
    /// More than one statement in one call.
    Several,
    /// Transaction control, which goes through `connection.begin()` and its `commit`/`rollback`.
    Transaction(String),
    /// `USE`: a grant opens one database.
    Use,
    /// Not a reading statement, on a read-only grant.
    NotRead(String),
    /// A reading statement that writes: `SELECT … INTO`, a data-modifying `WITH`, a row lock.
    Writes(String),
    /// A function whose effect outlives the read-only transaction (a lock, a file, a signal, ...).
    Function(String),
}

impl Problem {
    fn said(&self, name: &str) -> String {
        match self {
            Problem::Unparsed(why) => format!("the statement is not sent on database `{name}`: {why}"),
            Problem::Several => format!(
                "the statement is not sent on database `{name}`: one call runs one statement (split a script with `gantry_sdk::sql::split`)"
            ),
            Problem::Transaction(what) => format!(
                "`{what}` is not sent on database `{name}`: begin a transaction with `connection.begin()` and end it with its `commit` or `rollback`"
            ),
            Problem::Use => format!("`USE` is not sent on database `{name}`: a grant opens one database"),
            Problem::NotRead(what) => format!(
                "database `{name}` is granted read-only: `{what}` is not sent (only SELECT, WITH, SHOW, EXPLAIN, VALUES, TABLE, DESCRIBE that read)"
            ),
            Problem::Writes(what) => {
                format!("database `{name}` is granted read-only: the statement is refused because it {what}")
            }
            Problem::Function(f) => format!(
                "database `{name}` is granted read-only: `{f}()` is refused, since its effect outlives a read-only transaction"
            ),
        }
    }
}

/// Built-in functions whose effects a read-only transaction and its `ROLLBACK` do not stop, by
/// name or name prefix (`*`): locks that outlive the transaction, large objects and server files,
/// replication slots, notifications, settings, signals to other sessions, SQL run from text the
/// check never sees, connections to other servers. Lower case, as both engines fold names.
const SIDE_EFFECTS: &[&str] = &[
    // PostgreSQL
    "pg_advisory_*",
    "pg_try_advisory_*",
    "lo_*",
    "loread",
    "lowrite",
    "pg_notify",
    "set_config",
    "pg_create_*",
    "pg_drop_replication_slot",
    "pg_copy_*",
    "pg_replication_*",
    "pg_logical_*",
    "pg_cancel_backend",
    "pg_terminate_backend",
    "pg_signal_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_log_backend_memory_contexts",
    "pg_promote",
    "pg_switch_wal",
    "pg_backup_*",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_wal_replay_*",
    "pg_stat_reset*",
    "pg_file_*",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_*",
    "pg_stat_file",
    "pg_import_system_collations",
    "nextval",
    "setval",
    "query_to_xml*",
    "cursor_to_xml*",
    "ts_stat",
    "ts_rewrite",
    "dblink*",
    "http_*",
    // MariaDB and MySQL
    "get_lock",
    "release_lock",
    "release_all_locks",
    "load_file",
    "lastval",
    "master_pos_wait",
    "master_gtid_wait",
    "source_pos_wait",
    "sys_exec",
    "sys_eval",
];

/// Whether a function (its unqualified name, any case) is one [`SIDE_EFFECTS`] names.
fn has_side_effects(function: &str) -> bool {
    let function = function.to_ascii_lowercase();
    SIDE_EFFECTS.iter().any(|listed| match listed.strip_suffix('*') {
        Some(prefix) => function.starts_with(prefix),
        None => function == *listed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(url: &str, readonly: bool) -> DatabaseGrant {
        DatabaseGrant::for_test(url, readonly)
    }

    #[test]
    fn side_effects_are_matched_by_name_and_prefix_in_any_case() {
        assert!(has_side_effects("pg_advisory_lock"));
        assert!(has_side_effects("PG_ADVISORY_XACT_LOCK_SHARED"));
        assert!(has_side_effects("lo_create"));
        assert!(has_side_effects("Get_Lock"));
        assert!(!has_side_effects("lower"));
        assert!(!has_side_effects("count"));
    }

    #[test]
    fn messages_name_the_grant_and_the_way_out() {
        let ro = grant("postgres://db/app", true);
        assert!(refusal(&ro, "BEGIN").unwrap().contains("connection.begin()"));
        assert!(refusal(&ro, "delete from t").unwrap().contains("granted read-only: `DELETE`"));
        assert!(refusal(&ro, "select lo_create(0)").unwrap().contains("`lo_create()` is refused"));
        let my = grant("mysql://db/app", false);
        assert!(refusal(&my, "use other").unwrap().contains("opens one database"));
    }
}
