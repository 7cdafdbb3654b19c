//! A MySQL/MariaDB session over mysql_async: every statement of the plugin
//! is prepared (the binary protocol takes one statement, never a batch),
//! rows are streamed against the caps, and a statement past its timeout is
//! stopped with `KILL QUERY` from a second session.

use super::{Answer, Budget, Opening, SqlError, Value, Want};
use crate::capability::database::TlsMode;
use crate::capability::Database;
use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use std::net::IpAddr;

/// Character set number of binary strings: their values are bytes, not text.
const BINARY_CHARSET: u16 = 63;

/// An open session, and the options to open another one that can stop it.
pub(super) struct Session {
    conn: mysql_async::Conn,
    opts: mysql_async::Opts,
}

fn server_or_transport(e: mysql_async::Error) -> SqlError {
    match e {
        // The packet codec's refusal at a header over `max_allowed_packet`, before the packet is held.
        e if e.to_string().contains("max_allowed_packet") || e.to_string().contains("Packet too large") => {
            SqlError::Limit(format!(
                "the server sent a packet over the cap the step's `limits.response_size` sets ({e}); the connection is closed"
            ))
        }
        mysql_async::Error::Server(s) => SqlError::Server(super::wit::ServerError {
            code: s.state,
            message: format!("{} (error {})", s.message, s.code),
        }),
        other => SqlError::Transport(other.to_string()),
    }
}

impl Session {
    /// Connects to `ip` over TCP only (never the server's socket file), verifying TLS against the
    /// grant's host name. The driver refuses a packet over the cap before buffering it (its
    /// `max_allowed_packet`, checked at each packet header); the session starts read-only for a
    /// read-only grant, with the server's own statement limit set.
    pub(super) async fn connect(db: &Database, ip: IpAddr, opening: &Opening) -> Result<Self, SqlError> {
        let g = &db.grant;
        let cap = usize::try_from(opening.message_cap()).unwrap_or(usize::MAX);
        let mut builder = mysql_async::OptsBuilder::default()
            .ip_or_hostname(ip.to_string())
            .tcp_port(g.location.port)
            .user(Some(g.user.clone()))
            .pass(Some(db.password.clone()))
            .db_name(Some(g.location.database.clone()))
            .max_allowed_packet(Some(cap))
            .prefer_socket(false);
        if g.tls == TlsMode::Require {
            let roots = g.ca_file.iter().map(|p| p.clone().into()).collect();
            let ssl = mysql_async::SslOpts::default()
                .with_root_certs(roots)
                .with_danger_tls_hostname_override(Some(g.location.host.clone()));
            builder = builder.ssl_opts(ssl);
        }
        let opts = mysql_async::Opts::from(builder);
        let conn = mysql_async::Conn::new(opts.clone()).await.map_err(server_or_transport)?;
        let mut session = Self { conn, opts };
        // MariaDB's limit is in seconds; MySQL's (SELECT only) in milliseconds, where MariaDB's is unknown.
        let limit = opening.server_timeout.as_secs_f64().max(0.001);
        if session.control(&format!("SET SESSION max_statement_time = {limit:.3}")).await.is_err() {
            let _ = session.control(&format!("SET SESSION max_execution_time = {}", (limit * 1000.0) as u64)).await;
        }
        if g.readonly {
            session.control("SET SESSION TRANSACTION READ ONLY").await?;
            if !db.preflight_of_writable {
                session.confinable(&g.user, &g.name).await?;
            }
        }
        Ok(session)
    }

    /// Refuses a user that no transaction mode confines: `FILE` writes and reads the server's
    /// files (`SELECT … INTO OUTFILE`), `SUPER` changes the server and other sessions.
    async fn confinable(&mut self, user: &str, grant: &str) -> Result<(), SqlError> {
        let held: Vec<String> = self
            .conn
            .query(
                "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES \
                 WHERE PRIVILEGE_TYPE IN ('FILE', 'SUPER') AND GRANTEE = CONCAT('''', \
                 SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''') \
                 ORDER BY 1",
            )
            .await
            .map_err(server_or_transport)?;
        if held.is_empty() {
            return Ok(());
        }
        Err(SqlError::Denied(format!(
            "database `{grant}` is granted read-only, but `{user}` holds {}: no read-only transaction confines it \
             (SELECT … INTO OUTFILE, server variables, other sessions). Sign in as a user without FILE and SUPER, \
             given only SELECT on what it reads",
            held.join(" and ")
        )))
    }

    /// How to stop this session's running statement: `KILL QUERY` from a second session.
    pub(super) fn canceller(&self) -> super::Canceller {
        let (id, opts) = (self.conn.id(), self.opts.clone());
        super::Canceller::new(async move {
            let mut other = mysql_async::Conn::new(opts).await.map_err(|e| e.to_string())?;
            let killed = other.query_drop(format!("KILL QUERY {id}")).await.map_err(|e| e.to_string());
            let _ = other.disconnect().await;
            killed
        })
    }

    /// Ends a read-only grant's transaction: rolled back, and user locks (`GET_LOCK`) released,
    /// since those outlive a rollback.
    pub(super) async fn end_readonly(&mut self) -> Result<(), SqlError> {
        self.control("ROLLBACK").await?;
        let _ = self.conn.query_drop("DO RELEASE_ALL_LOCKS()").await;
        Ok(())
    }

    pub(super) async fn run(
        &mut self,
        statement: &str,
        params: &[Value],
        want: Want,
        budget: &mut Budget,
    ) -> Result<Answer, SqlError> {
        let prepared = self.conn.prep(statement).await.map_err(server_or_transport)?;
        super::arity(usize::from(prepared.num_params()), params.len())?;
        let values: Vec<mysql_async::Value> = params.iter().map(param).collect();
        let params =
            if values.is_empty() { mysql_async::Params::Empty } else { mysql_async::Params::Positional(values) };
        let mut result = self.conn.exec_iter(&prepared, params).await.map_err(server_or_transport)?;
        let columns: Vec<mysql_async::Column> = result.columns_ref().to_vec();
        let shown = columns
            .iter()
            .map(|c| super::Column { name: c.name_str().into_owned(), type_name: format!("{:?}", c.column_type()) })
            .collect();
        // execute() counts and decodes nothing.
        if want == Want::Count {
            let mut counted = 0u64;
            while result.next().await.map_err(server_or_transport)?.is_some() {
                counted += 1;
            }
            let affected = result.affected_rows();
            return Ok(Answer::Count(if columns.is_empty() { affected } else { counted }));
        }
        let mut rows = Vec::new();
        while let Some(row) = result.next().await.map_err(server_or_transport)? {
            let values = row.unwrap().into_iter().zip(&columns).map(|(v, c)| value(v, c)).collect::<Vec<_>>();
            if let Err(e) = budget.take(&values) {
                result.drop_result().await.map_err(server_or_transport)?;
                return Err(e);
            }
            rows.push(values);
        }
        drop(result);
        Ok(Answer::Rows(super::Rows { columns: shown, rows }))
    }

    pub(super) async fn control(&mut self, statement: &str) -> Result<(), SqlError> {
        self.conn.query_drop(statement).await.map_err(server_or_transport)
    }

    pub(super) async fn cancel(&mut self) {
        if let Err(e) = self.canceller().run().await {
            tracing::warn!("cannot stop the statement: {e}");
        }
    }
}

fn param(v: &Value) -> mysql_async::Value {
    match v {
        Value::Null => mysql_async::Value::NULL,
        Value::Boolean(b) => mysql_async::Value::Int(i64::from(*b)),
        Value::Integer(n) => mysql_async::Value::Int(*n),
        Value::Float(f) => mysql_async::Value::Double(*f),
        Value::Text(t) => mysql_async::Value::Bytes(t.clone().into_bytes()),
        Value::Bytes(b) => mysql_async::Value::Bytes(b.clone()),
    }
}

/// A column value: text for text columns (and dates, times and decimals, as the server writes them), bytes for binary ones.
fn value(v: mysql_async::Value, column: &mysql_async::Column) -> Value {
    use mysql_async::Value as M;
    match v {
        M::NULL => Value::Null,
        M::Int(n) => Value::Integer(n),
        M::UInt(n) => i64::try_from(n).map(Value::Integer).unwrap_or_else(|_| Value::Text(n.to_string())),
        M::Float(f) => Value::Float(f.into()),
        M::Double(f) => Value::Float(f),
        M::Bytes(b) => {
            let binary = column.character_set() == BINARY_CHARSET
                && !matches!(column.column_type(), ColumnType::MYSQL_TYPE_DECIMAL | ColumnType::MYSQL_TYPE_NEWDECIMAL);
            match (binary, String::from_utf8(b)) {
                (false, Ok(text)) => Value::Text(text),
                (_, Ok(text)) => Value::Bytes(text.into_bytes()),
                (_, Err(e)) => Value::Bytes(e.into_bytes()),
            }
        }
        date @ (M::Date(..) | M::Time(..)) => Value::Text(date.as_sql(true).trim_matches('\'').to_string()),
    }
}
