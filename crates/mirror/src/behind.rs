//! Work that yields the processor to answers: the indexing of a pack whose objects are being
//! found as it arrives, for a fetch that waits on them (see [`crate::live::Board::early_wanted`]),
//! and the receiving of that pack while it is read for them (see
//! [`crate::live::LivePack::read_early`]). Both want the same cores as the reading and the
//! answer; the answer is what a client waits on, and the pack is received and indexed as soon
//! either way when nothing else runs.

/// How much less of the processor work run [`behind_answers`] is given when others want it,
/// in steps of the `nice` scale (each weighs about a fifth less than the one before: ten
/// leave it about a tenth of a core beside one busy thread, and all of it when nothing else
/// runs). With five, the indexing took about a quarter of the reading's core, and a
/// depth-one answer on the bench's `large` repository took about 0.12 s longer. A thread
/// cannot raise its priority again: it stays lower to the work's end.
const STEPS: i32 = 10;

/// Run `work` on a thread of its own at a lower priority than the threads answering
/// clients (the threads it starts take that priority too), and return what it returns, and
/// whether it ran lower. Only on Linux, where a thread's priority is its own; elsewhere (or
/// when no thread can be started) it runs here, as any other work.
pub(crate) fn behind_answers<T: Send>(work: impl FnOnce() -> T + Send) -> (T, bool) {
    on_own_thread("behind-answers", |yielding| {
        yielding.step_behind();
        (work(), yielding.stepped_behind())
    })
}

/// What runs on a thread [`on_own_thread`] started may step behind answers with: its
/// priority lowered by [`STEPS`], for good. A thread shared with other work (a runtime's
/// pool) may not: its priority could not be raised again for the work after.
#[derive(Debug)]
pub(crate) struct Yielding {
    own: bool,
    /// Whether stepping behind was tried on a thread of its own.
    tried: std::cell::Cell<bool>,
    /// Whether that lowered the thread's priority.
    lowered: std::cell::Cell<bool>,
}

impl Yielding {
    /// For work on a thread it shares: it never steps behind.
    pub(crate) fn shared() -> Self {
        Yielding {
            own: false,
            tried: std::cell::Cell::new(false),
            lowered: std::cell::Cell::new(false),
        }
    }

    /// Lower this thread's priority, if it is the work's own (only on Linux); tried once.
    pub(crate) fn step_behind(&self) {
        if self.own && !self.tried.replace(true) {
            #[cfg(target_os = "linux")]
            self.lowered.set(lower_priority());
        }
    }

    /// Whether [`step_behind`](Self::step_behind) was tried on a thread of its own (never on
    /// a shared one).
    pub(crate) fn tried(&self) -> bool {
        self.tried.get()
    }

    /// Whether the work stepped behind: its thread's priority lowered.
    pub(crate) fn stepped_behind(&self) -> bool {
        self.lowered.get()
    }
}

/// Run `work` on a thread of its own named `name`, in the caller's span, where it may step
/// behind answers with the [`Yielding`] it is given, and return what it returns; here, never
/// stepping behind, when no thread can be started (or not on Linux, where a thread's
/// priority is not its own).
pub(crate) fn on_own_thread<T: Send>(name: &str, work: impl FnOnce(&Yielding) -> T + Send) -> T {
    #[cfg(target_os = "linux")]
    {
        let mut work = Some(work);
        let span = tracing::Span::current();
        let ran = std::thread::scope(|scope| {
            let work = &mut work;
            let spawned =
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn_scoped(scope, move || {
                        let _enter = span.enter();
                        let yielding = Yielding {
                            own: true,
                            tried: std::cell::Cell::new(false),
                            lowered: std::cell::Cell::new(false),
                        };
                        work.take().map(|work| work(&yielding))
                    });
            match spawned {
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p)),
                Err(_) => None,
            }
        });
        match (ran, work) {
            (Some(done), _) => done,
            (None, Some(work)) => work(&Yielding::shared()),
            (None, None) => unreachable!("the work ran, or it is still here"),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = name;
        work(&Yielding::shared())
    }
}

/// Lower the calling thread's priority by [`STEPS`] (Linux keeps one per thread, inherited
/// by the threads it starts); whether it was. A failure leaves it as it was: only the order
/// of work changes.
#[cfg(target_os = "linux")]
fn lower_priority() -> bool {
    let Ok(now) = rustix::process::getpriority_process(None) else {
        return false;
    };
    let lower = now.saturating_add(STEPS).min(19);
    if lower <= now {
        // As low as it goes already.
        return false;
    }
    match rustix::process::setpriority_process(None, lower) {
        Ok(()) => true,
        Err(err) => {
            tracing::debug!(%err, "a thread's priority was left as it was");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The work runs, at a lower priority than the caller's on Linux, and the caller's own
    /// priority is left as it was.
    #[test]
    fn work_runs_behind_and_the_caller_is_untouched() {
        #[cfg(target_os = "linux")]
        let before = rustix::process::getpriority_process(None).unwrap();
        let (inside, lowered) = behind_answers(|| {
            #[cfg(target_os = "linux")]
            return rustix::process::getpriority_process(None).unwrap();
            #[cfg(not(target_os = "linux"))]
            0
        });
        #[cfg(target_os = "linux")]
        {
            assert_eq!(inside, (before + STEPS).min(19));
            assert_eq!(lowered, before < 19);
            assert_eq!(rustix::process::getpriority_process(None).unwrap(), before);
        }
        #[cfg(not(target_os = "linux"))]
        assert_eq!((inside, lowered), (0, false));
    }

    /// Work on a thread of its own steps behind when it says so, once, and the caller's
    /// priority is left as it was; work given a shared thread never does.
    #[test]
    fn only_a_thread_of_its_own_steps_behind() {
        #[cfg(target_os = "linux")]
        let before = rustix::process::getpriority_process(None).unwrap();
        let (name, at_start, stepped, after) = on_own_thread("stepping", |yielding| {
            let name = std::thread::current().name().map(str::to_owned);
            #[cfg(target_os = "linux")]
            let at_start = rustix::process::getpriority_process(None).unwrap();
            #[cfg(not(target_os = "linux"))]
            let at_start = 0;
            yielding.step_behind();
            yielding.step_behind();
            #[cfg(target_os = "linux")]
            let after = rustix::process::getpriority_process(None).unwrap();
            #[cfg(not(target_os = "linux"))]
            let after = 0;
            (name, at_start, yielding.stepped_behind(), after)
        });
        #[cfg(target_os = "linux")]
        {
            assert_eq!(name.as_deref(), Some("stepping"));
            assert_eq!(at_start, before, "the caller's priority to start with");
            // Lowered unless it was as low as it goes already.
            assert_eq!(stepped, before < 19);
            assert_eq!(after, (before + STEPS).min(19), "lowered once, by STEPS");
            assert_eq!(rustix::process::getpriority_process(None).unwrap(), before);
        }
        #[cfg(not(target_os = "linux"))]
        assert!(name.is_none() && !stepped && at_start == after);

        let shared = Yielding::shared();
        shared.step_behind();
        assert!(!shared.stepped_behind(), "a shared thread is never lowered");
        #[cfg(target_os = "linux")]
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), before);
    }
}
