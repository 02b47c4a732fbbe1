//! What to do about one task, given its container: a pure function, so
//! that the supervisor is idempotent (running it twice on the same view
//! asks for the same steps) and every rule is tested without Docker.
//!
//! The rules, as a kubelet's:
//!
//! - no container yet: create and start it (a failed create or pull ends
//!   the task Failed with the reason — the job reconciler decides whether to
//!   try again, with its own backoff, so a bad image is no retry storm);
//! - running: report Running with its container id and start time; if its
//!   health check keeps failing, kill it (then the exit rules apply);
//! - exited: if the restart policy says so (Always; OnFailure after a
//!   failure), start it again after an exponential backoff, counting the
//!   restart; otherwise report Succeeded (code 0) or Failed with the exit
//!   code, OOM kill and reason.

use std::time::Duration;

use berth_proto::pb;

use super::runtime::{Container, ContainerState, Exit};

/// The pause before restart number `n + 1`: `first × 2^n`, at most `max`;
/// back to `first` once a container ran for `reset_after`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    fn delay_ms(&self, restarts: u32, ran_for_ms: i64) -> i64 {
        if ran_for_ms >= self.reset_after.as_millis() as i64 {
            return self.first.as_millis() as i64;
        }
        let delay = self.first.saturating_mul(1u32 << restarts.min(16));
        delay.min(self.max).as_millis() as i64
    }
}

/// Ends the message of a task waiting to restart; what comes before it is
/// the account of the exit, which the Running status after the restart
/// keeps.
const RESTARTING_IN: &str = "; restarting in ";

/// How long after a SIGKILL exit the OOM flag may still arrive.
const OOM_SETTLE_MS: i64 = 1_000;

/// What the supervisor knows about a task's container.
#[derive(Debug, Default)]
pub struct Seen<'a> {
    /// The newest container of this incarnation.
    pub container: Option<&'a Container>,
    /// How it ended, if it exited.
    pub exit: Option<&'a Exit>,
    /// When it started, if it runs (Unix ms).
    pub started_at_ms: i64,
    /// The last create of this incarnation failed.
    pub create_error: Option<&'a str>,
    /// Its health check failed past the threshold: why.
    pub unhealthy: Option<&'a str>,
    /// The agent killed it, and why (e.g. a failed health check).
    pub killed_because: Option<&'a str>,
    /// Restarts done that the stored status may not show yet.
    pub restarts_done: u32,
    /// The exit that caused the last restart, in words.
    pub last_exit: Option<&'a str>,
}

/// One step for the supervisor.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Create the container (pulling its image) and start it; `restarts`
    /// counts a container that vanished and is replaced.
    Create { restarts: u32 },
    /// Start an existing container again (`restarts` after this start;
    /// `after`: the exit that caused it, empty for a first start).
    Start {
        id: String,
        restarts: u32,
        after: String,
    },
    /// Kill a running container, for `reason`.
    Kill { id: String, reason: String },
    /// Write this status.
    Report(pb::TaskStatus),
    /// Look again at `at_ms` (a restart backoff running out).
    WakeAt { at_ms: i64 },
}

fn restarts_on_exit(policy: pb::RestartPolicy, exit: &Exit, killed: bool) -> bool {
    let failed = exit.code != 0 || exit.oom_killed || killed;
    match policy {
        pb::RestartPolicy::Never => false,
        pb::RestartPolicy::OnFailure => failed,
        pb::RestartPolicy::Always | pb::RestartPolicy::Unspecified => true,
    }
}

/// A human account of an exit.
fn exit_message(exit: &Exit, killed_because: Option<&str>) -> String {
    let mut parts = Vec::new();
    if let Some(reason) = killed_because {
        parts.push(format!("killed: {reason}"));
    }
    if exit.oom_killed {
        parts.push("OOM killed: over its memory limit".to_string());
    }
    parts.push(format!("exited with code {}", exit.code));
    if !exit.error.is_empty() {
        parts.push(exit.error.clone());
    }
    parts.join("; ")
}

/// How long after a SIGKILL exit (137) reported as plain Failed the agent
/// still looks for the engine's OOM mark on the container. The engine's
/// "oom" event can land seconds after "die" on a busy machine, past
/// [`OOM_SETTLE_MS`]; a task must not stay reported as merely killed.
pub const LATE_OOM_WINDOW_MS: i64 = 30_000;

/// Whether an ended task may still learn that it was OOM killed: it failed
/// with 137, not so marked, within [`LATE_OOM_WINDOW_MS`].
pub fn may_learn_oom_kill(status: &pb::TaskStatus, now_ms: i64) -> bool {
    status.phase() == pb::TaskPhase::Failed
        && status.exit_code == Some(137)
        && !status.oom_killed
        && now_ms < status.finished_at_ms.saturating_add(LATE_OOM_WINDOW_MS)
}

/// The corrected status of an ended task whose container's exit the engine
/// has since marked OOM killed; `None` if there is nothing to correct.
pub fn late_oom_kill(status: &pb::TaskStatus, exit: &Exit) -> Option<pb::TaskStatus> {
    if status.phase() != pb::TaskPhase::Failed
        || status.oom_killed
        || !exit.oom_killed
        || status.exit_code != Some(exit.code)
    {
        return None;
    }
    let mut corrected = status.clone();
    corrected.oom_killed = true;
    corrected.message = exit_message(exit, None);
    Some(corrected)
}

/// The steps for a task bound to this node that has not ended.
pub fn decide(task: &pb::Task, seen: &Seen<'_>, now_ms: i64, backoff: &Backoff) -> Vec<Step> {
    let status = task.status.clone().unwrap_or_default();
    let policy = task
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .map_or(pb::RestartPolicy::Always, |t| t.restart_policy());
    let restarts = status.restarts.max(seen.restarts_done);
    let report_if_changed = |desired: pb::TaskStatus| {
        if desired != status {
            vec![Step::Report(desired)]
        } else {
            Vec::new()
        }
    };

    let Some(container) = seen.container else {
        if let Some(error) = seen.create_error {
            let mut failed = status.clone();
            failed.phase = pb::TaskPhase::Failed as i32;
            failed.message = error.to_string();
            failed.finished_at_ms = now_ms;
            return vec![Step::Report(failed)];
        }
        // A container that ran and is gone (removed behind Berth's back)
        // is replaced as its exit would be, counting a restart.
        let vanished = !status.container_id.is_empty();
        if vanished && policy == pb::RestartPolicy::Never {
            let mut failed = status.clone();
            failed.phase = pb::TaskPhase::Failed as i32;
            failed.message = "the container was removed outside Berth".into();
            failed.finished_at_ms = now_ms;
            return vec![Step::Report(failed)];
        }
        let restarts = if vanished { restarts + 1 } else { restarts };
        return vec![Step::Create { restarts }];
    };

    match container.state {
        ContainerState::Created => vec![Step::Start {
            id: container.id.clone(),
            restarts,
            after: String::new(),
        }],
        ContainerState::Running => {
            if let Some(reason) = seen.unhealthy {
                return vec![Step::Kill {
                    id: container.id.clone(),
                    reason: reason.to_string(),
                }];
            }
            let mut running = status.clone();
            running.phase = pb::TaskPhase::Running as i32;
            running.container_id = container.id.clone();
            running.restarts = restarts;
            if seen.started_at_ms > 0 {
                running.started_at_ms = seen.started_at_ms;
            }
            running.exit_code = None;
            running.oom_killed = false;
            running.finished_at_ms = 0;
            // After a restart, the message keeps the account of the exit
            // that caused it, as `kubectl describe` shows a last state.
            running.message = match status.phase() {
                _ if seen.last_exit.is_some() => {
                    format!("restarted after: {}", seen.last_exit.unwrap_or_default())
                }
                pb::TaskPhase::Starting if !status.message.is_empty() => {
                    let exit = status.message.split(RESTARTING_IN).next().unwrap_or("");
                    format!("restarted after: {exit}")
                }
                pb::TaskPhase::Running => status.message.clone(),
                _ => String::new(),
            };
            report_if_changed(running)
        }
        ContainerState::Exited => {
            let Some(exit) = seen.exit else {
                return Vec::new();
            };
            // The engine learns of an OOM kill from a separate event that
            // may land after the exit: a SIGKILL (137) without the flag is
            // looked at again a moment later before it is judged.
            let settled_at = exit.finished_at_ms + OOM_SETTLE_MS;
            if exit.code == 137
                && !exit.oom_killed
                && exit.finished_at_ms > 0
                && now_ms < settled_at
            {
                return vec![Step::WakeAt { at_ms: settled_at }];
            }
            let message = exit_message(exit, seen.killed_because);
            if restarts_on_exit(policy, exit, seen.killed_because.is_some()) {
                let ran_for = exit.finished_at_ms - exit.started_at_ms;
                let finished = if exit.finished_at_ms > 0 {
                    exit.finished_at_ms
                } else {
                    now_ms
                };
                let due = finished + backoff.delay_ms(restarts, ran_for);
                if now_ms >= due {
                    return vec![Step::Start {
                        id: container.id.clone(),
                        restarts: restarts + 1,
                        after: message,
                    }];
                }
                let mut waiting = status.clone();
                waiting.phase = pb::TaskPhase::Starting as i32;
                waiting.container_id = container.id.clone();
                waiting.restarts = restarts;
                waiting.exit_code = Some(exit.code);
                waiting.oom_killed = exit.oom_killed;
                let wait_s = (due - now_ms + 999) / 1000;
                waiting.message = format!("{message}{RESTARTING_IN}{wait_s}s");
                // The message names the wait; rewrite it only when the
                // exit it reports is new, not each second.
                let mut steps = Vec::new();
                if status.phase() != pb::TaskPhase::Starting
                    || status.exit_code != Some(exit.code)
                    || status.restarts != restarts
                    || status.oom_killed != exit.oom_killed
                {
                    steps.push(Step::Report(waiting));
                }
                steps.push(Step::WakeAt { at_ms: due });
                return steps;
            }
            let mut ended = status.clone();
            // A container that ended before a pass saw it run.
            if exit.started_at_ms > 0 {
                ended.started_at_ms = exit.started_at_ms;
            }
            let succeeded = exit.code == 0 && !exit.oom_killed && seen.killed_because.is_none();
            ended.phase = if succeeded {
                pb::TaskPhase::Succeeded
            } else {
                pb::TaskPhase::Failed
            } as i32;
            ended.container_id = container.id.clone();
            ended.restarts = restarts;
            ended.exit_code = Some(exit.code);
            ended.oom_killed = exit.oom_killed;
            ended.finished_at_ms = if exit.finished_at_ms > 0 {
                exit.finished_at_ms
            } else {
                now_ms
            };
            ended.message = message;
            vec![Step::Report(ended)]
        }
        ContainerState::Other => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(policy: pb::RestartPolicy, phase: pb::TaskPhase, restarts: u32) -> pb::Task {
        pb::Task {
            metadata: None,
            spec: Some(pb::TaskSpec {
                template: Some(pb::TaskTemplate {
                    image: "img".into(),
                    restart_policy: policy as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(pb::TaskStatus {
                phase: phase as i32,
                node: "n1".into(),
                container_id: if phase == pb::TaskPhase::Scheduled {
                    String::new()
                } else {
                    "c1".into()
                },
                restarts,
                ..Default::default()
            }),
        }
    }

    fn container(state: ContainerState) -> Container {
        Container {
            id: "c1".into(),
            namespace: "default".into(),
            task: "web-0".into(),
            uid: "u1".into(),
            incarnation: 1,
            state,
            ip: None,
            created: 0,
        }
    }

    fn exit(code: i32, oom: bool) -> Exit {
        Exit {
            code,
            oom_killed: oom,
            started_at_ms: 1_000,
            finished_at_ms: 2_000,
            error: String::new(),
        }
    }

    fn reported(steps: &[Step]) -> &pb::TaskStatus {
        match steps.first() {
            Some(Step::Report(status)) => status,
            other => panic!("expected a report, got {other:?}"),
        }
    }

    #[test]
    fn a_new_task_gets_a_container_and_a_failed_create_fails_it() {
        let t = task(pb::RestartPolicy::Always, pb::TaskPhase::Scheduled, 0);
        let b = Backoff::default();
        assert_eq!(
            decide(&t, &Seen::default(), 0, &b),
            [Step::Create { restarts: 0 }]
        );
        let seen = Seen {
            create_error: Some("image nope:latest cannot be pulled: not found"),
            ..Default::default()
        };
        let status = reported(&decide(&t, &seen, 5, &b)).clone();
        assert_eq!(status.phase(), pb::TaskPhase::Failed);
        assert!(status.message.contains("cannot be pulled"));
    }

    #[test]
    fn a_running_container_is_reported_once() {
        let t = task(pb::RestartPolicy::Always, pb::TaskPhase::Scheduled, 0);
        let c = container(ContainerState::Running);
        let seen = Seen {
            container: Some(&c),
            started_at_ms: 42,
            ..Default::default()
        };
        let b = Backoff::default();
        let status = reported(&decide(&t, &seen, 50, &b)).clone();
        assert_eq!(status.phase(), pb::TaskPhase::Running);
        assert_eq!(
            (status.container_id.as_str(), status.started_at_ms),
            ("c1", 42)
        );
        let stored = pb::Task {
            status: Some(status),
            ..t
        };
        assert!(decide(&stored, &seen, 60, &b).is_empty(), "idempotent");
    }

    #[test]
    fn exits_follow_the_restart_policy() {
        let b = Backoff::default();
        let c = container(ContainerState::Exited);
        let cases = [
            (pb::RestartPolicy::Never, 0, pb::TaskPhase::Succeeded),
            (pb::RestartPolicy::Never, 3, pb::TaskPhase::Failed),
            (pb::RestartPolicy::OnFailure, 0, pb::TaskPhase::Succeeded),
        ];
        for (policy, code, phase) in cases {
            let t = task(policy, pb::TaskPhase::Running, 0);
            let e = exit(code, false);
            let seen = Seen {
                container: Some(&c),
                exit: Some(&e),
                ..Default::default()
            };
            let status = reported(&decide(&t, &seen, 10_000, &b)).clone();
            assert_eq!(status.phase(), phase, "{policy:?} code {code}");
            assert_eq!(status.exit_code, Some(code));
            assert_eq!(
                (status.started_at_ms, status.finished_at_ms),
                (1_000, 2_000)
            );
        }
        // OnFailure with a failure, Always with anything: restart.
        for (policy, code) in [
            (pb::RestartPolicy::OnFailure, 1),
            (pb::RestartPolicy::Always, 0),
        ] {
            let t = task(policy, pb::TaskPhase::Running, 2);
            let e = exit(code, false);
            let seen = Seen {
                container: Some(&c),
                exit: Some(&e),
                ..Default::default()
            };
            // Finished at 2 s; the third restart waits 4 s.
            let waiting = decide(&t, &seen, 3_000, &b);
            assert_eq!(reported(&waiting).phase(), pb::TaskPhase::Starting);
            assert_eq!(waiting.last(), Some(&Step::WakeAt { at_ms: 6_000 }));
            assert_eq!(
                decide(&t, &seen, 6_000, &b),
                [Step::Start {
                    id: "c1".into(),
                    restarts: 3,
                    after: format!("exited with code {code}"),
                }]
            );
        }
    }

    #[test]
    fn an_oom_mark_that_comes_late_corrects_an_ended_task() {
        let mut status = pb::TaskStatus {
            phase: pb::TaskPhase::Failed as i32,
            exit_code: Some(137),
            finished_at_ms: 1_000,
            message: "exited with code 137".into(),
            ..Default::default()
        };
        assert!(may_learn_oom_kill(&status, 2_000));
        assert!(!may_learn_oom_kill(&status, 1_000 + LATE_OOM_WINDOW_MS));
        assert_eq!(late_oom_kill(&status, &exit(137, false)), None);
        let corrected = late_oom_kill(&status, &exit(137, true)).unwrap();
        assert!(corrected.oom_killed);
        assert!(
            corrected.message.contains("OOM killed"),
            "{}",
            corrected.message
        );
        assert_eq!(corrected.phase(), pb::TaskPhase::Failed);
        // Once marked, or for another exit, nothing more to correct.
        status.oom_killed = true;
        assert!(!may_learn_oom_kill(&status, 2_000));
        assert_eq!(late_oom_kill(&status, &exit(137, true)), None);
        status.oom_killed = false;
        status.exit_code = Some(1);
        assert!(!may_learn_oom_kill(&status, 2_000));
    }

    #[test]
    fn oom_kills_and_health_kills_are_named() {
        let b = Backoff::default();
        let c = container(ContainerState::Exited);
        let t = task(pb::RestartPolicy::Never, pb::TaskPhase::Running, 0);
        let e = exit(137, true);
        let seen = Seen {
            container: Some(&c),
            exit: Some(&e),
            ..Default::default()
        };
        let status = reported(&decide(&t, &seen, 10_000, &b)).clone();
        assert!(status.oom_killed);
        assert_eq!(status.phase(), pb::TaskPhase::Failed);
        assert!(status.message.contains("OOM killed"), "{}", status.message);

        let running = container(ContainerState::Running);
        let seen = Seen {
            container: Some(&running),
            unhealthy: Some("GET /health: 500"),
            ..Default::default()
        };
        assert_eq!(
            decide(&t, &seen, 0, &b),
            [Step::Kill {
                id: "c1".into(),
                reason: "GET /health: 500".into()
            }]
        );
        // A SIGKILL whose OOM flag may still be on its way waits a moment.
        let e = exit(137, false);
        let seen = Seen {
            container: Some(&c),
            exit: Some(&e),
            ..Default::default()
        };
        assert_eq!(
            decide(&t, &seen, 2_500, &b),
            [Step::WakeAt { at_ms: 3_000 }]
        );
        assert_eq!(
            reported(&decide(&t, &seen, 3_000, &b)).phase(),
            pb::TaskPhase::Failed
        );
        // Killed for health with exit 0 still counts as a failure.
        let e = exit(0, false);
        let seen = Seen {
            container: Some(&c),
            exit: Some(&e),
            killed_because: Some("health check failed"),
            ..Default::default()
        };
        let status = reported(&decide(&t, &seen, 10_000, &b)).clone();
        assert_eq!(status.phase(), pb::TaskPhase::Failed);
        assert!(status.message.contains("health check failed"));
    }

    #[test]
    fn backoff_doubles_and_resets_after_a_long_run() {
        let b = Backoff::default();
        assert_eq!(b.delay_ms(0, 0), 1_000);
        assert_eq!(b.delay_ms(3, 0), 8_000);
        assert_eq!(b.delay_ms(30, 0), 60_000);
        assert_eq!(b.delay_ms(30, 400_000), 1_000);
    }
}
