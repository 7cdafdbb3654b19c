//! Migration files and the history they are checked against: names, checksums, what is pending,
//! and drift. Pure, so it is unit-tested natively.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// One versioned migration: `V3__add_bookings.sql` and, if present, `U3__add_bookings.sql`.
#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    /// The number after `V`.
    pub version: i64,
    /// The words after `__`, underscores as spaces.
    pub description: String,
    /// The up file's name, for messages.
    pub file: String,
    /// The up file's text.
    pub up: String,
    /// The down file's text, when there is one.
    pub down: Option<String>,
    /// SHA-256 of the up file, hex.
    pub checksum: String,
}

/// Where a migration recorded in the history table stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Every statement ran.
    Applied,
    /// Going up statement by statement (engines whose DDL commits on its own).
    Applying,
    /// Going down statement by statement.
    Undoing,
}

impl State {
    /// The word stored in the history table.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Applied => "applied",
            State::Applying => "applying",
            State::Undoing => "undoing",
        }
    }

    /// Parses the stored word.
    pub fn parse(word: &str) -> Option<Self> {
        [State::Applied, State::Applying, State::Undoing].into_iter().find(|s| s.as_str() == word)
    }
}

/// A row of the history table.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The migration's version.
    pub version: i64,
    /// Its checksum when it was applied.
    pub checksum: String,
    /// Where it stands.
    pub state: State,
    /// Statements of the current direction that finished.
    pub done: i64,
    /// The statement under way when the row was last written (a crash leaves it set).
    pub running: Option<i64>,
}

/// Reads `(file name, text)` pairs into migrations ordered by version; other file kinds are
/// ignored, a `.sql` file named otherwise is an error (a typo must not skip a migration).
pub fn parse(files: &[(String, String)]) -> Result<Vec<Migration>, String> {
    let mut ups: BTreeMap<i64, Migration> = BTreeMap::new();
    let mut downs: BTreeMap<i64, (String, String)> = BTreeMap::new();
    for (name, text) in files {
        let Some(stem) = name.strip_suffix(".sql") else { continue };
        let (kind, rest) = stem.split_at(stem.chars().next().map_or(0, char::len_utf8));
        let parsed = rest.split_once("__").and_then(|(v, d)| Some((v.parse::<i64>().ok()?, d)));
        let (version, description) = match (kind, parsed) {
            ("V" | "U", Some((v, d))) if v > 0 && !d.is_empty() => (v, d.replace('_', " ")),
            _ => {
                return Err(format!(
                    "{name}: a migration is named V<version>__<description>.sql (or U… for its down file)"
                ))
            }
        };
        if kind == "U" {
            if downs.insert(version, (name.clone(), text.clone())).is_some() {
                return Err(format!("{name}: a second down file for version {version}"));
            }
            continue;
        }
        let migration = Migration {
            version,
            description,
            file: name.clone(),
            up: text.clone(),
            down: None,
            checksum: checksum(text),
        };
        if let Some(other) = ups.insert(version, migration) {
            return Err(format!("{name}: version {version} is also {}", other.file));
        }
    }
    for (version, (name, text)) in downs {
        match ups.get_mut(&version) {
            Some(m) => m.down = Some(text),
            None => return Err(format!("{name}: a down file without V{version}__….sql")),
        }
    }
    Ok(ups.into_values().collect())
}

/// SHA-256 of a migration's text, hex.
pub fn checksum(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// What must run, in order, to bring `history` to `target` (the last version when `None`);
/// refuses drift (an applied file changed or gone), an unfinished migration and a gap.
pub fn pending<'a>(
    migrations: &'a [Migration],
    history: &[Applied],
    target: Option<i64>,
) -> Result<Vec<&'a Migration>, String> {
    let by_version: BTreeMap<i64, &Migration> = migrations.iter().map(|m| (m.version, m)).collect();
    for row in history {
        if row.state != State::Applied {
            return Err(format!(
                "V{} is {} after {} statement(s){}: an earlier run stopped part-way; see the db-migrate README for how to finish it by hand",
                row.version,
                row.state.as_str(),
                row.done,
                row.running.map(|k| format!(", statement {k} under way")).unwrap_or_default()
            ));
        }
        match by_version.get(&row.version) {
            None => return Err(format!("V{} is applied but its file is gone from the migrations directory", row.version)),
            Some(m) if m.checksum != row.checksum => {
                return Err(format!(
                    "{} changed after it was applied (checksum {} then, {} now): an applied migration never runs again; restore the file and add a new version",
                    m.file,
                    short(&row.checksum),
                    short(&m.checksum)
                ))
            }
            Some(_) => {}
        }
    }
    let last_applied = history.iter().map(|r| r.version).max().unwrap_or(0);
    let applied: Vec<i64> = history.iter().map(|r| r.version).collect();
    let mut todo = Vec::new();
    for m in migrations.iter().filter(|m| !applied.contains(&m.version)) {
        if m.version < last_applied {
            return Err(format!("{} is not applied, but V{last_applied} is: migrations run in order", m.file));
        }
        if target.is_none_or(|t| m.version <= t) {
            todo.push(m);
        }
    }
    Ok(todo)
}

/// The first 12 hex digits, enough to tell checksums apart in a message.
fn short(checksum: &str) -> &str {
    &checksum[..checksum.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[&str]) -> Vec<(String, String)> {
        names.iter().map(|n| (n.to_string(), format!("-- {n}\nSELECT 1;"))).collect()
    }

    fn applied(m: &Migration) -> Applied {
        Applied { version: m.version, checksum: m.checksum.clone(), state: State::Applied, done: 1, running: None }
    }

    #[test]
    fn files_pair_up_by_version_in_order_and_a_misnamed_sql_file_is_refused() {
        let ms = parse(&files(&["V10__z.sql", "V2__add_bookings.sql", "U2__add_bookings.sql", "notes.md"])).unwrap();
        assert_eq!(ms.iter().map(|m| m.version).collect::<Vec<_>>(), [2, 10]);
        assert_eq!(ms[0].description, "add bookings");
        assert!(ms[0].down.is_some() && ms[1].down.is_none());
        assert!(parse(&files(&["V1_x.sql"])).unwrap_err().contains("V1_x.sql"));
        assert!(parse(&files(&["U3__x.sql"])).unwrap_err().contains("without V3"));
        assert!(parse(&files(&["V3__a.sql", "V3__b.sql"])).unwrap_err().contains("also"));
    }

    #[test]
    fn pending_is_what_follows_the_history_up_to_the_target() {
        let ms = parse(&files(&["V1__a.sql", "V2__b.sql", "V3__c.sql"])).unwrap();
        let history = [applied(&ms[0])];
        let versions = |t| pending(&ms, &history, t).unwrap().iter().map(|m| m.version).collect::<Vec<_>>();
        assert_eq!(versions(None), [2, 3]);
        assert_eq!(versions(Some(2)), [2]);
    }

    #[test]
    fn drift_a_gap_and_an_unfinished_migration_are_refused_before_anything_runs() {
        let ms = parse(&files(&["V1__a.sql", "V2__b.sql", "V3__c.sql"])).unwrap();
        let mut changed = applied(&ms[0]);
        changed.checksum = checksum("something else");
        assert!(pending(&ms, &[changed], None).unwrap_err().contains("V1__a.sql changed"));
        assert!(pending(&ms, &[applied(&ms[2])], None).unwrap_err().contains("V1__a.sql is not applied, but V3 is"));
        let gone = Applied { version: 7, ..applied(&ms[0]) };
        assert!(pending(&ms, &[gone], None).unwrap_err().contains("V7 is applied but its file is gone"));
        let half = Applied { state: State::Applying, running: Some(2), ..applied(&ms[0]) };
        assert!(pending(&ms, &[half], None).unwrap_err().contains("statement 2 under way"));
    }
}
