//! Property test of the fold: a simulated executor writes the events a real one writes (steps
//! interleaved up to `jobs`, a failing step, cancellation, undo, resume and rollback sessions that
//! decide from the fold as the CLI does, and a person's settle), crashing at random moments up to three times, a torn
//! last line included; beside it, a reference model of the target tracks what is changed.
//!
//! Properties, after every crash and at the end:
//! - the fold never misses a change: every step whose change is on the target owes an undo;
//! - the fold's completed steps are exactly those whose finish is recorded and not undone since;
//! - its phase is the last phase the journal recorded;
//! - after the final recovery the target is all changed (succeeded), all back (failed, rolled
//!   back), or all back but the barrier step (stopped at a barrier), and the fold's status agrees;
//! - the fold names the barrier exactly while the barrier step's record of it is in place.

use super::*;
use crate::run::store::file::parse_journal;
use crate::run::Status;
use proptest::prelude::*;

/// The process died: nothing after this moment happened.
#[derive(Debug)]
struct Crash;

/// What a recovery does.
#[derive(Debug, Clone, Copy)]
enum Recovery {
    Resume,
    Rollback,
    /// `gantry rollback --past-barrier`.
    RollbackPast,
    /// `gantry settle`: a person accepts the state as it is.
    Settle,
}

struct Sim {
    n: usize,
    /// The step whose plugin fails after its change.
    fails: Option<usize>,
    /// The step that records a rollback barrier before its change.
    barrier: Option<usize>,
    /// Reference: the barrier step's record of its barrier is durable and not undone since.
    barrier_recorded: bool,
    jobs: usize,
    rng: u64,
    /// Durable records.
    records: Vec<Record>,
    /// Queued, not yet durable.
    queued: Vec<Event>,
    session: u32,
    /// Operations left before the crash (`None`: no crash this session).
    budget: Option<usize>,
    /// The crash came while writing an event: its line is torn.
    torn: bool,
    /// Reference: each step's change is on the target.
    target: Vec<bool>,
    /// Reference: each step's finish is recorded and not undone since.
    done: Vec<bool>,
    /// Reference: the last phase recorded.
    phase: Option<RunPhase>,
}

/// One step in flight: how far it got.
#[derive(Clone, Copy, PartialEq)]
enum Stage {
    Checkpoint,
    Change,
    End,
}

impl Sim {
    fn next(&mut self) -> u64 {
        // xorshift64*: reproducible from the case's seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn op(&mut self) -> Result<(), Crash> {
        match &mut self.budget {
            Some(0) => Err(Crash),
            Some(left) => {
                *left -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn push(&mut self, event: Event) {
        match &event {
            Event::Phase { phase, .. } => self.phase = Some(*phase),
            // A journal with no phase event yet is read as running from its start.
            Event::RunStarted { .. } => self.phase = Some(RunPhase::Running),
            _ => {}
        }
        let seq = self.records.last().map(|r| r.seq).unwrap_or(0) + 1;
        self.records.push(Record { seq, ts_ms: seq as f64, session: self.session, event });
    }

    /// Writes `event` durably after everything queued, as `Journal::write` does.
    fn write(&mut self, event: Event) -> Result<(), Crash> {
        if self.op().is_err() {
            self.torn = self.next().is_multiple_of(2);
            return Err(Crash);
        }
        for queued in std::mem::take(&mut self.queued) {
            self.push(queued);
        }
        self.push(event);
        Ok(())
    }

    fn queue(&mut self, event: Event) {
        self.queued.push(event);
    }

    fn id(i: usize) -> String {
        format!("s{i}")
    }

    /// Undoes step `i` on the target, then records it.
    fn undo(&mut self, i: usize) -> Result<(), Crash> {
        self.op()?;
        self.target[i] = false;
        self.write(Event::RolledBack { step: Self::id(i), attempt: 1 })?;
        self.done[i] = false;
        if Some(i) == self.barrier {
            self.barrier_recorded = false;
        }
        Ok(())
    }

    fn finish(&mut self, status: &str) -> Result<(), Crash> {
        self.write(Event::RunFinished { status: status.into() })
    }

    /// One session: a new run, a resume or a rollback, deciding from the fold as the CLI does.
    fn session(&mut self, first: bool, recovery: Recovery) -> Result<(), Crash> {
        self.session += 1;
        self.queued.clear();
        let f = fold(&self.records);
        if first {
            let started = Event::RunStarted {
                run_id: "r".into(),
                pipeline: "p".into(),
                environment: "e".into(),
                entity: "x".into(),
                plugins: BTreeMap::new(),
                file: None,
                plan: serde_json::Value::Null,
                started_by: None,
                rollout: None,
            };
            self.write(started)?;
            self.queue(Event::Phase { phase: RunPhase::Running, reason: "started".into() });
            return self.forward(BTreeSet::new(), BTreeMap::new());
        }
        if f.start.is_none() {
            // Killed before its start was recorded: nothing ran.
            return Ok(());
        }
        let settled = f.status() == Status::Settled.name();
        if matches!(recovery, Recovery::Settle) {
            // `gantry settle` refuses a run that is back, done or settled; else it is one record.
            let refused = [Status::Succeeded, Status::RolledBack, Status::Settled].map(Status::name);
            if !refused.contains(&f.status().as_str()) {
                self.write(Event::Settled { by: "p".into(), reason: "accepted".into() })?;
            }
            return Ok(());
        }
        let at_barrier = f.phase == Some(RunPhase::AtBarrier);
        if matches!(recovery, Recovery::Resume) && f.finished.is_some() && (!at_barrier || settled) {
            // `gantry resume` of a finished run refuses, unless it stopped at a barrier and nobody settled it.
            return Ok(());
        }
        if matches!(recovery, Recovery::Rollback | Recovery::RollbackPast) || f.rolling_back() {
            let past = matches!(recovery, Recovery::RollbackPast);
            if past && !f.past_barrier {
                self.write(Event::PastBarrier { by: "p".into() })?;
            }
            self.write(Event::Phase { phase: RunPhase::RollingBack, reason: "rollback".into() })?;
            let kept: BTreeSet<String> = if past || f.past_barrier {
                BTreeSet::new()
            } else {
                f.barriers().into_iter().map(|b| b.step).collect()
            };
            for id in f.undo_order().into_iter().filter(|id| !kept.contains(id)) {
                self.undo(index(&id))?;
            }
            return self.stop_or_finish(&kept, "rolled-back");
        }
        self.write(Event::Phase { phase: RunPhase::Running, reason: "resumed".into() })?;
        // Steps cut off part-way are undone from their checkpoints, then run again; a barrier's step
        // goes on from its checkpoints instead.
        let cut: Vec<String> = f
            .cut_off()
            .into_iter()
            .rev()
            .filter(|id| !f.steps[id].checkpoints.is_empty() && Some(index(id)) != self.barrier)
            .collect();
        for id in &cut {
            self.undo(index(id))?;
        }
        let done: BTreeSet<usize> = f.completed().iter().map(|(id, _)| index(id)).collect();
        let order: BTreeMap<usize, u64> = f.completed().iter().map(|(id, _)| (index(id), f.steps[id].since)).collect();
        self.forward(done, order)
    }

    /// Ends a rollback: at the barrier when a barrier step was kept, else with `status`.
    fn stop_or_finish(&mut self, kept: &BTreeSet<String>, status: &str) -> Result<(), Crash> {
        if kept.is_empty() {
            return self.finish(status);
        }
        self.write(Event::Phase { phase: RunPhase::AtBarrier, reason: "barrier".into() })?;
        self.finish("stopped-at-barrier")
    }

    /// Runs the steps not yet done, up to `jobs` at once, interleaved at random; on the failing
    /// step's failure, cancels the others and undoes what is in place.
    fn forward(&mut self, done: BTreeSet<usize>, since: BTreeMap<usize, u64>) -> Result<(), Crash> {
        let mut pending: Vec<usize> = (0..self.n).filter(|i| !done.contains(i)).collect();
        let mut active: Vec<(usize, Stage)> = Vec::new();
        // Completed in this session and before, in completion order, and steps cut off with checkpoints.
        let mut completed: Vec<(u64, usize)> = since.into_iter().map(|(i, s)| (s, i)).collect();
        completed.sort();
        let mut completed: Vec<usize> = completed.into_iter().map(|(_, i)| i).collect();
        let mut checkpointed = BTreeSet::new();
        loop {
            if pending.is_empty() && active.is_empty() {
                return self.finish("succeeded");
            }
            let start = !pending.is_empty()
                && (active.len() < self.jobs)
                && (active.is_empty() || self.next().is_multiple_of(2));
            if start {
                let i = pending.remove(0);
                self.write(Event::StepStarted { step: Self::id(i), attempt: 1, notifier: false })?;
                active.push((i, Stage::Checkpoint));
                continue;
            }
            let k = self.pick(active.len());
            let (i, stage) = active[k];
            match stage {
                Stage::Checkpoint => {
                    let cp =
                        Event::Checkpoint { step: Self::id(i), key: "before".into(), value: "v".into(), attempt: 1 };
                    self.write(cp)?;
                    checkpointed.insert(i);
                    if Some(i) == self.barrier {
                        let value = r#"{"reason":"irreversible","changed":"x"}"#.to_string();
                        let key = crate::run::BARRIER_CHECKPOINT.to_string();
                        self.write(Event::Checkpoint { step: Self::id(i), key, value, attempt: 1 })?;
                        self.barrier_recorded = true;
                    }
                    active[k].1 = Stage::Change;
                }
                Stage::Change => {
                    self.op()?;
                    self.target[i] = true;
                    self.queue(Event::Request(crate::sandbox::RequestRecord::allowed_post(&Self::id(i), None)));
                    active[k].1 = Stage::End;
                }
                Stage::End if Some(i) == self.fails => {
                    active.remove(k);
                    self.write(Event::Phase { phase: RunPhase::RollingBack, reason: "failed".into() })?;
                    let failed = |step: usize, kind: &str| Event::StepFailed {
                        step: Self::id(step),
                        kind: kind.into(),
                        error: "e".into(),
                        continue_on_error: false,
                        attempt: 1,
                    };
                    self.write(failed(i, "failed"))?;
                    let mut partial = vec![i];
                    for (other, _) in std::mem::take(&mut active) {
                        self.write(failed(other, "cancelled"))?;
                        partial.push(other);
                    }
                    // The barrier's step stays, when its barrier is recorded (steps here need none).
                    let kept: BTreeSet<String> =
                        self.barrier.filter(|_| self.barrier_recorded).map(Self::id).into_iter().collect();
                    let undo: Vec<usize> = partial
                        .iter()
                        .rev()
                        .filter(|s| checkpointed.contains(*s))
                        .chain(completed.iter().rev())
                        .copied()
                        .filter(|s| !kept.contains(&Self::id(*s)))
                        .collect();
                    for s in undo {
                        self.undo(s)?;
                    }
                    return self.stop_or_finish(&kept, "failed");
                }
                Stage::End => {
                    active.remove(k);
                    self.write(Event::StepFinished { step: Self::id(i), outputs: Outputs::new(), attempt: 1 })?;
                    self.done[i] = true;
                    completed.push(i);
                }
            }
        }
    }

    /// The journal as a store reads it back: JSON lines, the torn one included when the crash tore it.
    fn read_back(&self) -> Vec<Record> {
        let mut text: String = self.records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
        if self.torn {
            text.push_str(r#"{"seq":999,"ts_ms":1.0,"session":9,"event":"step_fini"#);
        }
        let journal = parse_journal(&text);
        assert_eq!(journal.torn.len(), usize::from(self.torn));
        journal.records
    }

    /// The properties that hold whenever the process is not running.
    fn check(&self, when: &str) {
        let f = fold(&self.read_back());
        let owed: BTreeSet<String> = f.in_place().into_iter().collect();
        for i in (0..self.n).filter(|&i| self.target[i]) {
            assert!(owed.contains(&Self::id(i)), "{when}: s{i} is changed on the target, the fold misses it: {f:#?}");
        }
        let completed: BTreeSet<String> = f.completed().into_iter().map(|(id, _)| id).collect();
        let done: BTreeSet<String> = (0..self.n).filter(|&i| self.done[i]).map(Self::id).collect();
        assert_eq!(completed, done, "{when}: completed steps");
        assert_eq!(f.phase, self.phase, "{when}: phase");
        let barriers: Vec<String> = f.barriers().into_iter().map(|b| b.step).collect();
        let expected: Vec<String> = self.barrier.filter(|_| self.barrier_recorded).map(Self::id).into_iter().collect();
        assert_eq!(barriers, expected, "{when}: barriers");
    }
}

fn index(id: &str) -> usize {
    id[1..].parse().unwrap()
}

/// Runs one case: a run and up to three crashes, each recovery chosen by `recoveries`, then a
/// last recovery that is not cut off.
fn case(n: usize, fails: Option<usize>, barrier: Option<usize>, jobs: usize, seed: u64, crashes: &[(usize, u8)]) {
    let mut sim = Sim {
        n,
        fails: fails.filter(|&i| i < n),
        barrier: barrier.filter(|&i| i < n),
        barrier_recorded: false,
        jobs,
        rng: seed | 1,
        records: Vec::new(),
        queued: Vec::new(),
        session: 0,
        budget: None,
        torn: false,
        target: vec![false; n],
        done: vec![false; n],
        phase: None,
    };
    let mut first = true;
    let mut recovery = Recovery::Resume;
    for (k, &(budget, then)) in crashes.iter().enumerate() {
        sim.budget = Some(budget);
        sim.torn = false;
        let crashed = sim.session(first, recovery).is_err();
        first = first && sim.records.is_empty();
        sim.check(&format!("after crash {k} (budget {budget})"));
        if !crashed {
            break;
        }
        recovery = match then {
            0 => Recovery::Resume,
            1 => Recovery::Rollback,
            2 => Recovery::RollbackPast,
            _ => Recovery::Settle,
        };
    }
    sim.budget = None;
    sim.session(first, recovery).expect("no crash");
    sim.check("at the end");
    let f = fold(&sim.read_back());
    let status = f.status();
    let all = |v: bool| sim.target.iter().all(|&t| t == v);
    match status.as_str() {
        "succeeded" => assert!(all(true), "succeeded, yet not every change is in place: {:?}", sim.target),
        "failed" | "rolled-back" => assert!(all(false), "{status}, yet changes remain: {:?}", sim.target),
        "stopped-at-barrier" => {
            let b = sim.barrier.expect("a barrier step");
            let others = (0..sim.n).filter(|&i| i != b).all(|i| !sim.target[i]);
            assert!(others, "stopped at the barrier of s{b}, yet other changes remain: {:?}", sim.target);
            assert!(sim.barrier_recorded, "stopped at a barrier the journal no longer holds");
        }
        // Whatever is in place stays, and the fold still names all of it (checked above).
        "settled" => assert!(matches!(recovery, Recovery::Settle), "settled without a settle"),
        other => panic!("unexpected status {other}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_fold_agrees_with_the_target_after_any_sequence_of_crashes(
        n in 1usize..7,
        fails in proptest::option::of(0usize..7),
        barrier in proptest::option::of(0usize..7),
        jobs in 1usize..3,
        seed in any::<u64>(),
        crashes in proptest::collection::vec((0usize..40, 0u8..4), 0..4),
    ) {
        case(n, fails, barrier, jobs, seed, &crashes);
    }
}

#[test]
fn the_double_crash_of_a_resume_is_folded_as_a_run_going_forward() {
    // Forward run killed with s0 done and s1 cut off after its change; the resume undoes s1, runs it
    // again and is killed after s1's second change: s1 is changed again, and the run still goes forward.
    let mut sim = Sim {
        n: 3,
        fails: Some(2),
        barrier: None,
        barrier_recorded: false,
        jobs: 1,
        rng: 7,
        records: Vec::new(),
        queued: Vec::new(),
        session: 0,
        budget: Some(8),
        torn: false,
        target: vec![false; 3],
        done: vec![false; 3],
        phase: None,
    };
    assert!(sim.session(true, Recovery::Resume).is_err());
    assert_eq!(sim.target, [true, true, false]);
    sim.budget = Some(6);
    assert!(sim.session(false, Recovery::Resume).is_err());
    let f = fold(&sim.records);
    assert_eq!(sim.target, [true, true, false], "s1 undone and changed again");
    assert!(!f.rolling_back(), "a rolled_back of a cut-off step does not move the phase");
    assert_eq!(f.steps["s1"].state, StepState::Started);
    assert_eq!(f.steps["s1"].attempt.session, 2);
    assert_eq!(f.undo_order(), ["s1", "s0"]);
}

#[test]
fn a_step_cut_off_after_a_read_through_post_owes_nothing_and_after_a_write_a_person() {
    // AWS APIs read through POST: a resume killed between its DescribeListeners and its first
    // checkpoint changed nothing, so a rollback after it has nothing to prove.
    let post = |action: &str| Event::Request(crate::sandbox::RequestRecord::allowed_post("shift", Some(action)));
    let mut events = vec![
        Event::Phase { phase: RunPhase::Running, reason: "started".into() },
        Event::StepStarted { step: "shift".into(), attempt: 1, notifier: false },
        post("DescribeListeners"),
    ];
    let records = |events: &[Event]| -> Vec<Record> {
        let at = |(i, e): (usize, &Event)| Record { seq: i as u64 + 1, ts_ms: 0.0, session: 1, event: e.clone() };
        events.iter().enumerate().map(at).collect()
    };
    let f = fold(&records(&events));
    assert_eq!(f.cut_off(), ["shift"]);
    assert!(f.unknown_changes().is_empty() && f.in_place().is_empty(), "{f:#?}");
    events.push(post("ModifyListener"));
    let changes: Vec<String> = fold(&records(&events)).unknown_changes().into_keys().collect();
    assert_eq!(changes, ["shift"]);
}
