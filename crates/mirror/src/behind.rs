//! Work that yields the processor to answers: the indexing of a pack whose objects are being
//! found as it arrives, for a fetch that waits on them (see [`crate::live::Board::early_wanted`]).
//! Both want the same cores once the download is over; the answer is what a client waits
//! on, and the indexing finishes as soon either way when nothing else runs.

/// How much less of the processor work run [`behind_answers`] is given when others want it,
/// in steps of the `nice` scale (each weighs about a fifth less than the one before: ten
/// leave it about a tenth of a core beside one busy thread, and all of it when nothing else
/// runs). With five, the indexing took about a quarter of the reading's core, and a
/// depth-one answer on the bench's `large` repository took about 0.12 s longer. A thread
/// cannot raise its priority again: it stays lower to the work's end.
const STEPS: i32 = 10;

/// Run `work` on a thread of its own at a lower priority than the threads answering
/// clients (the threads it starts take that priority too), and return what it returns.
/// Only on Linux, where a thread's priority is its own; elsewhere (or when no thread can
/// be started) it runs here, as any other work.
pub(crate) fn behind_answers<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    #[cfg(target_os = "linux")]
    {
        let mut work = Some(work);
        let span = tracing::Span::current();
        let ran = std::thread::scope(|scope| {
            let work = &mut work;
            let spawned = std::thread::Builder::new()
                .name("behind-answers".into())
                .spawn_scoped(scope, move || {
                    let _enter = span.enter();
                    lower_priority();
                    work.take().map(|work| work())
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
            (None, Some(work)) => work(),
            (None, None) => unreachable!("the work ran, or it is still here"),
        }
    }
    #[cfg(not(target_os = "linux"))]
    work()
}

/// Lower the calling thread's priority by [`STEPS`] (Linux keeps one per thread, inherited
/// by the threads it starts). A failure leaves it as it was: only the order of work changes.
#[cfg(target_os = "linux")]
fn lower_priority() {
    let Ok(now) = rustix::process::getpriority_process(None) else {
        return;
    };
    let lower = now.saturating_add(STEPS).min(19);
    if let Err(err) = rustix::process::setpriority_process(None, lower) {
        tracing::debug!(%err, "the indexing's priority was left as it was");
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
        let inside = behind_answers(|| {
            #[cfg(target_os = "linux")]
            return rustix::process::getpriority_process(None).unwrap();
            #[cfg(not(target_os = "linux"))]
            0
        });
        #[cfg(target_os = "linux")]
        {
            assert_eq!(inside, (before + STEPS).min(19));
            assert_eq!(rustix::process::getpriority_process(None).unwrap(), before);
        }
        #[cfg(not(target_os = "linux"))]
        assert_eq!(inside, 0);
    }
}
