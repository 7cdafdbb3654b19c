//! Crash consistency: runs killed with SIGKILL at moments spread over the forward and the
//! rollback phase, recovered by `resume` or `rollback`, the recovery itself killed and recovered
//! again, up to three crashes deep; a recording server on 127.0.0.1 is the target, read back
//! independently of the plugin.
//!
//! The property: after the last recovery ends, every change the server saw has a later undo, and
//! the run's state agrees with the server (succeeded ⇒ every step's change present once, after its
//! last undo; failed or rolled back ⇒ none). `GANTRY_KILL_MOMENTS` sets how many kill moments the
//! loop tries (20 by default), `GANTRY_KILL_SEED` replays a seed; the seed is printed on failure.

use crate::peers::Postgres;
use crate::support::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A pipeline of the misbehave plugin's `guarded` steps: checkpoint, change (a request to the
/// server), work for `ms`, fail when it is the failing one.
struct Pipeline {
    name: String,
    /// `(id, needs, ms, rollback_ms, fails)`.
    steps: Vec<(String, Vec<String>, u64, u64, bool)>,
}

impl Pipeline {
    fn yaml(&self, server: &CountingServer) -> String {
        let plugin = repo().join("tests/plugins/misbehave");
        let mut text = format!("name: {}\nsteps:\n", self.name);
        for (id, needs, ms, rollback_ms, fails) in &self.steps {
            text += &format!(
                "  - id: {id}\n    uses: {plugin}\n    needs: [{needs}]\n    network: [\"{origin}\"]\n    \
                 with: {{ url: \"{origin}/record\", action: guarded, message: v, ms: {ms}, rollback_ms: {rollback_ms}, then_fail: {fails} }}\n",
                plugin = plugin.display(),
                needs = needs.join(", "),
                origin = server.origin(),
            );
        }
        text
    }

    fn write(&self, dir: &Path, server: &CountingServer) -> PathBuf {
        let file = dir.join(format!("{}.yaml", self.name));
        std::fs::write(&file, self.yaml(server)).unwrap();
        file
    }

    /// How long a run of it takes at most, forward and back, for spreading kill moments.
    fn span_ms(&self) -> u64 {
        self.steps.iter().map(|(_, _, ms, rb, _)| ms + rb + 60).sum()
    }
}

/// Where runs are recorded: the file store in the test's directory, or a PostgreSQL URL.
#[derive(Clone, Copy)]
enum Store<'a> {
    File,
    Postgres(&'a str),
}

fn gantry(dir: &Path, store: Store, args: &[&str]) -> Command {
    let mut cmd = command(&shared_cache());
    cmd.args(args).current_dir(dir).env("GANTRY_LOG", "error");
    match store {
        Store::File => cmd.env_remove("GANTRY_STATE"),
        Store::Postgres(url) => cmd.env("GANTRY_STATE", url),
    };
    cmd
}

/// The run of pipeline `name` as `gantry runs --json` lists it: `(id, status)`.
fn listed(dir: &Path, store: Store, name: &str) -> Option<(String, String)> {
    let out = gantry(dir, store, &["runs", "--json"]).output().unwrap();
    expect_code(&out, 0);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["run"].as_str().is_some_and(|run| run.starts_with(&format!("{name} "))))
        .map(|r| (r["id"].as_str().unwrap().to_string(), r["status"].as_str().unwrap().to_string()))
}

/// What the server saw, per step: each call in order, `run` or `rollback`.
fn seen(server: &CountingServer) -> BTreeMap<String, Vec<String>> {
    let mut by_step: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for request in server.requests() {
        // "POST run s3", "POST rollback-to-v s3"
        let mut words = request.split_whitespace().skip(1);
        let (what, step) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
        let what = if what.starts_with("rollback") { "rollback" } else { "run" };
        by_step.entry(step.to_string()).or_default().push(what.to_string());
    }
    by_step
}

/// Checks the property against what the server saw; `Err` says what broke.
fn consistent(pipeline: &Pipeline, server: &CountingServer, status: &str) -> Result<(), String> {
    let seen = seen(server);
    for (id, calls) in &seen {
        // A change on top of a change not undone is a step run again on its half-change.
        let mut changed = false;
        for call in calls {
            match call.as_str() {
                "run" if changed => return Err(format!("{id} changed again on top of its change: {calls:?}")),
                "run" => changed = true,
                _ => changed = false,
            }
        }
        let want = status == "succeeded";
        if changed != want {
            return Err(format!(
                "run {status}, but {id} ends {}: {calls:?}",
                if changed { "changed" } else { "undone" }
            ));
        }
    }
    if status == "succeeded" {
        if let Some((id, ..)) = pipeline.steps.iter().find(|(id, ..)| !seen.contains_key(id)) {
            return Err(format!("run succeeded, but {id} never ran"));
        }
    }
    match status {
        "succeeded" | "failed" | "rolled-back" | "interrupted" => Ok(()),
        other => Err(format!("the run ended {other}")),
    }
}

/// Spawns `gantry args` and kills it with SIGKILL after `after`, unless it ended first;
/// gives back whether it was killed.
fn kill_after(mut cmd: Command, after: Duration) -> bool {
    let mut child: Child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let until = Instant::now() + after;
    while Instant::now() < until {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    killed
}

/// A small, seeded generator (xorshift64*): the same seed replays the same trials.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A generated pipeline: 4–8 steps in chains and fan-out, one failing in most trials.
fn generate(rng: &mut Rng, name: String) -> Pipeline {
    let n = 4 + rng.below(5) as usize;
    let failing = (rng.below(10) < 7).then(|| rng.below(n as u64) as usize);
    let steps = (0..n)
        .map(|i| {
            let needs: Vec<String> = match i {
                0 => Vec::new(),
                _ => {
                    let a = rng.below(i as u64) as usize;
                    let mut needs = vec![format!("s{a}")];
                    if i > 2 && rng.below(3) == 0 {
                        let b = rng.below(i as u64) as usize;
                        if b != a {
                            needs.push(format!("s{b}"));
                        }
                    }
                    needs
                }
            };
            (format!("s{i}"), needs, 40 + rng.below(200), rng.below(120), failing == Some(i))
        })
        .collect();
    Pipeline { name, steps }
}

/// One trial: run, killed at a random moment; up to two recoveries killed too; a last recovery
/// left to end. Gives back `(crashes, Err(what broke))`.
fn trial(rng: &mut Rng, dir: &Path, store: Store, name: String) -> (u32, Result<(), String>) {
    let server = CountingServer::start(Reply::text(200, "ok"));
    let pipeline = generate(rng, name.clone());
    let file = pipeline.write(dir, &server);
    let file = file.to_str().unwrap();
    let span = pipeline.span_ms();
    let mut crashes = 0;
    // Spread over the forward and the rollback phase: a run of jobs 2 ends in well under `span`.
    let moment = |rng: &mut Rng| Duration::from_millis(60 + rng.below(span / 2));
    if kill_after(gantry(dir, store, &["run", file, "--jobs", "2"]), moment(rng)) {
        crashes += 1;
    }
    // Killed before its first event: no run to recover.
    let Some((id, _)) = listed(dir, store, &name) else { return (crashes, Ok(())) };
    let recovery = |rng: &mut Rng| if rng.below(3) == 0 { "rollback" } else { "resume" };
    // Killed while reading its secrets, a run waits for a recovery to close it, as a cut-off one does.
    let open = |status: &str| ["incomplete", "reading-secrets"].contains(&status);
    for _ in 0..2 {
        let (_, status) = listed(dir, store, &name).unwrap();
        if !open(&status) {
            break;
        }
        if kill_after(gantry(dir, store, &[recovery(rng), &id]), moment(rng)) {
            crashes += 1;
        }
    }
    let (_, status) = listed(dir, store, &name).unwrap();
    if open(&status) {
        let out = gantry(dir, store, &[recovery(rng), &id]).output().unwrap();
        if !matches!(out.status.code(), Some(0 | 1)) {
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            return (crashes, Err(format!("the last recovery exited {:?}: {stderr}", out.status.code())));
        }
    }
    let (_, status) = listed(dir, store, &name).unwrap();
    let journal = || {
        let out = gantry(dir, store, &["runs", "show", &id]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let explain = |e| format!("{e}\n{}\nseen: {:?}\njournal:\n{}", pipeline.yaml(&server), seen(&server), journal());
    (crashes, consistent(&pipeline, &server, &status).map_err(explain))
}

/// Runs the kill loop over `moments` trials and fails naming the seed and trial of the first
/// inconsistency.
fn kill_loop(store: Store, moments: u64, label: &str) {
    let seed = std::env::var("GANTRY_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let (mut crashes, mut deepest) = (0, 0);
    for trial_no in 0..moments {
        let (c, result) = trial(&mut rng, dir.path(), store, format!("kill-loop-{label}-{trial_no}"));
        if let Err(e) = result {
            panic!("kill loop ({label}), GANTRY_KILL_SEED={seed}, trial {trial_no} ({c} crashes): {e}");
        }
        crashes += c;
        deepest = deepest.max(c);
    }
    eprintln!(
        "kill loop ({label}): {moments} trials, {crashes} kills landed, {deepest} crashes deep at most, seed {seed}, failures 0"
    );
    assert!(crashes > 0, "no kill landed in {moments} trials: the kill moments miss the runs");
}

fn moments(default: u64) -> u64 {
    std::env::var("GANTRY_KILL_MOMENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[test]
fn kill_loop_against_the_file_store_leaves_all_or_nothing() {
    kill_loop(Store::File, moments(20), "file");
}

#[test]
fn kill_loop_against_the_postgres_store_leaves_all_or_nothing() {
    let pg = Postgres::start();
    kill_loop(Store::Postgres(&pg.url()), moments(20) / 2, "postgres");
}

/// Spawns `gantry args` and kills it with SIGKILL once the journal shows `reached`.
fn kill_when(dir: &Path, args: &[&str], what: &str, reached: impl Fn(&[serde_json::Value]) -> bool) {
    let mut cmd = gantry(dir, Store::File, args);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = spawn_until(&mut cmd, what, || reached(&journal(dir)));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Whether the journal records a request by each of `steps` in session `session`.
fn changed_in(j: &[serde_json::Value], session: u64, steps: &[&str]) -> bool {
    steps.iter().all(|s| j.iter().any(|e| e["event"] == "request" && e["step"] == *s && e["session"] == session))
}

#[test]
fn a_resume_killed_after_rerunning_cut_off_steps_is_resumed_again_and_undoes_every_change() {
    // Ten guarded steps in two chains (s0 → s2 → … → s8, s1 → s3 → … → s9), the last one failing.
    let server = CountingServer::start(Reply::text(200, "ok"));
    let dir = tempfile::tempdir().unwrap();
    let steps = (0..10)
        .map(|i| {
            let needs = if i < 2 { Vec::new() } else { vec![format!("s{}", i - 2)] };
            (format!("s{i}"), needs, 1500, 0, i == 9)
        })
        .collect();
    let pipeline = Pipeline { name: "double-crash".into(), steps };
    let file = pipeline.write(dir.path(), &server);
    // Killed with s4 and s5 cut off after their change.
    kill_when(dir.path(), &["run", file.to_str().unwrap(), "--jobs", "2"], "s4, s5 changed", |j| {
        changed_in(j, 1, &["s4", "s5"])
    });
    let id = run_id(dir.path());
    // The resume undoes s4, s5, runs them again, starts s6, s7 and is killed after their change.
    kill_when(dir.path(), &["resume", &id, "--jobs", "2"], "s6, s7 changed in the resume", |j| {
        changed_in(j, 2, &["s6", "s7"])
    });
    let calls = seen(&server);
    assert_eq!(calls["s4"], ["run", "rollback", "run"], "the first resume undid s4 and ran it again");
    assert_eq!(calls["s6"], ["run"]);
    // The second resume goes forward from the fold: s6, s7 undone and run again, s8, s9; s9 fails,
    // and everything is undone.
    let out = gantry(dir.path(), Store::File, &["resume", &id, "--jobs", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, status) = listed(dir.path(), Store::File, "double-crash").unwrap();
    assert_eq!(status, "failed");
    consistent(&pipeline, &server, &status).unwrap();
    for step in ["s4", "s5", "s6", "s7"] {
        assert_eq!(seen(&server)[step].last().map(String::as_str), Some("rollback"), "{step} is undone");
    }
}
