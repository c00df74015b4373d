//! A mirror's first pack while it arrives, readable before it is taken in.
//!
//! A mirror made from nothing fetches the closure of the upstream's tips in one pack, and a
//! clone of the same tips is answered by exactly that pack. Its bytes are written to a file
//! as they arrive; a [`LivePack`] lets a reader follow that file, so that the clone that
//! asked for the mirror gets the pack as the upstream sends it, rather than after the whole
//! pack is indexed and checked (which, for a large repository, takes longer than the
//! download). The mirror still takes the pack in, and checks it, as it would have.
//!
//! ```
//! use gitcache_mirror::live::{Board, Progress};
//! use std::io::Write;
//! use std::time::Duration;
//!
//! let board = Board::default();
//! let dir = tempfile::tempdir().unwrap();
//! let mut file = std::fs::File::create(dir.path().join("received.pack")).unwrap();
//! let reader = std::fs::File::open(dir.path().join("received.pack")).unwrap();
//! let publisher = board.announce(vec![], gix_hash::Kind::Sha1, reader);
//! let pack = board.current().unwrap();
//!
//! file.write_all(b"PACK").unwrap();
//! publisher.arrived(4);
//! assert_eq!(pack.wait_past(0, Duration::from_secs(1)), Progress::Arriving(4));
//! let mut buf = [0; 4];
//! assert_eq!(pack.read_at(&mut buf, 0).unwrap(), 4);
//! assert_eq!(&buf, b"PACK");
//! drop(publisher); // never said whole: a failure
//! assert!(matches!(pack.wait_past(4, Duration::ZERO), Progress::Failed(_)));
//! ```

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use gix_hash::{Kind as HashKind, ObjectId};

/// How far a live pack has arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The first this many bytes of the file may be read; more are coming.
    Arriving(u64),
    /// The whole pack, this many bytes, trailer included, is in the file as received.
    Whole(u64),
    /// Receiving it failed (why, in words a client may be shown): the bytes read so far
    /// are no pack.
    Failed(String),
}

/// A first pack while it is received: the wants it answers and its bytes so far.
#[derive(Debug)]
pub struct LivePack {
    /// The wants the pack was asked for, sorted, each once.
    wants: Vec<ObjectId>,
    format: HashKind,
    /// The file the pack is written to (read at offsets: renaming it or removing it, as
    /// taking the pack in does, changes nothing for a reader holding it).
    file: std::fs::File,
    progress: Mutex<Progress>,
    changed: Condvar,
}

impl LivePack {
    /// Whether the pack answers a fetch of exactly `wants` (in any order, repeats aside).
    pub fn answers(&self, wants: &[ObjectId]) -> bool {
        let mut wants = wants.to_vec();
        wants.sort_unstable();
        wants.dedup();
        wants == self.wants
    }

    /// The object format of the pack.
    pub fn object_format(&self) -> HashKind {
        self.format
    }

    /// Read the file's bytes at `offset` into `buf` (only what [`wait_past`](Self::wait_past)
    /// said has arrived is meaningful).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.file, buf, offset)
    }

    /// How far the pack has arrived, once more than `offset` bytes have, or it ended, or
    /// `most` has passed (then as it is).
    pub fn wait_past(&self, offset: u64, most: Duration) -> Progress {
        let deadline = Instant::now() + most;
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match &*progress {
                Progress::Arriving(n) if *n <= offset => {}
                other => return other.clone(),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return progress.clone();
            }
            progress = self
                .changed
                .wait_timeout(progress, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn set(&self, to: Progress) {
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        // An end is final.
        if matches!(*progress, Progress::Arriving(_)) {
            *progress = to;
            self.changed.notify_all();
        }
    }
}

/// The receiving end's hold on a [`LivePack`]: it says how far the pack has arrived, and
/// that it is whole. Dropped before that, the pack failed.
#[derive(Debug)]
pub struct Publisher {
    pack: Arc<LivePack>,
}

impl Publisher {
    /// The first `bytes` of the file may be read now.
    pub fn arrived(&self, bytes: u64) {
        self.pack.set(Progress::Arriving(bytes));
    }

    /// The whole pack is in the file: `bytes`, trailer included.
    pub fn whole(self, bytes: u64) {
        self.pack.set(Progress::Whole(bytes));
    }

    /// Receiving failed: `why`.
    pub fn failed(self, why: impl Into<String>) {
        self.pack.set(Progress::Failed(why.into()));
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.pack.set(Progress::Failed(
            "the upstream's pack was not received whole".into(),
        ));
    }
}

/// Where a mirror's first pack is announced while it arrives (one a mirror), or said to be
/// coming from elsewhere.
#[derive(Debug, Default)]
pub struct Board {
    posted: Mutex<Posted>,
    told: tokio::sync::Notify,
}

/// What a board says now.
#[derive(Debug, Default)]
struct Posted {
    /// The pack arriving now.
    pack: Option<Arc<LivePack>>,
    /// The refresh under way brings the mirror from elsewhere (another instance fetches it,
    /// or it is copied from a shared store): no pack is announced here meanwhile.
    elsewhere: bool,
}

impl Board {
    /// A pack asked for with `wants`, in `format`, arriving into the file `file` is read
    /// from: announced until [`clear`](Self::clear). The returned publisher tells its
    /// readers how far it has arrived.
    pub fn announce(
        &self,
        wants: Vec<ObjectId>,
        format: HashKind,
        file: std::fs::File,
    ) -> Publisher {
        let mut wants = wants;
        wants.sort_unstable();
        wants.dedup();
        let pack = Arc::new(LivePack {
            wants,
            format,
            file,
            progress: Mutex::new(Progress::Arriving(0)),
            changed: Condvar::new(),
        });
        *self.posted() = Posted {
            pack: Some(Arc::clone(&pack)),
            elsewhere: false,
        };
        self.told.notify_waiters();
        Publisher { pack }
    }

    /// The refresh under way brings the mirror from elsewhere: those waiting for a pack
    /// ([`next`](Self::next)) are told none is coming, until one is announced or the board
    /// is [cleared](Self::clear).
    pub fn elsewhere(&self) {
        let mut posted = self.posted();
        if posted.pack.is_none() {
            posted.elsewhere = true;
            drop(posted);
            self.told.notify_waiters();
        }
    }

    /// The pack announced now, if any.
    pub fn current(&self) -> Option<Arc<LivePack>> {
        self.posted().pack.clone()
    }

    /// The pack announced now, or the next one announced; `None` once the refresh under way
    /// is said to bring the mirror from [elsewhere](Self::elsewhere).
    pub async fn next(&self) -> Option<Arc<LivePack>> {
        self.wait_for(|posted| match &posted.pack {
            Some(pack) => Some(Some(Arc::clone(pack))),
            None => posted.elsewhere.then_some(None),
        })
        .await
    }

    /// The pack announced now, or the next one announced, whatever was said of elsewhere: for
    /// those told none was coming, should this instance fetch the mirror itself after all
    /// (the other instance's fetch failed).
    pub async fn announced(&self) -> Arc<LivePack> {
        self.wait_for(|posted| posted.pack.clone()).await
    }

    /// What `pick` makes of what is posted, once it makes something.
    async fn wait_for<T>(&self, pick: impl Fn(&Posted) -> Option<T>) -> T {
        loop {
            let told = self.told.notified();
            tokio::pin!(told);
            // Listening before looking: an announcement in between still wakes this.
            told.as_mut().enable();
            if let Some(picked) = pick(&self.posted()) {
                return picked;
            }
            told.await;
        }
    }

    /// No pack is announced any more, nor said to come from elsewhere (the refresh that did
    /// ended).
    pub fn clear(&self) {
        *self.posted() = Posted::default();
    }

    fn posted(&self) -> std::sync::MutexGuard<'_, Posted> {
        self.posted.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn oid(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    #[test]
    fn a_reader_follows_the_file_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.pack");
        let mut file = std::fs::File::create(&path).unwrap();
        let board = Board::default();
        let publisher = board.announce(
            vec![oid(2), oid(1), oid(2)],
            HashKind::Sha1,
            std::fs::File::open(&path).unwrap(),
        );
        let pack = board.current().unwrap();
        assert!(pack.answers(&[oid(1), oid(2)]));
        assert!(pack.answers(&[oid(2), oid(1), oid(1)]));
        assert!(!pack.answers(&[oid(1)]));
        assert!(!pack.answers(&[oid(1), oid(2), oid(3)]));

        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            loop {
                match pack.wait_past(got.len() as u64, Duration::from_secs(30)) {
                    Progress::Arriving(n) | Progress::Whole(n) if n > got.len() as u64 => {
                        let mut buf = vec![0; n as usize - got.len()];
                        let read = pack.read_at(&mut buf, got.len() as u64).unwrap();
                        got.extend_from_slice(&buf[..read]);
                    }
                    Progress::Whole(_) => return got,
                    other => panic!("{other:?}"),
                }
            }
        });
        for chunk in [&b"PACK"[..], b"\0\0\0\x02", b"rest of it"] {
            file.write_all(chunk).unwrap();
            let len = file.metadata().unwrap().len();
            publisher.arrived(len);
            std::thread::sleep(Duration::from_millis(5));
        }
        // Taking the pack in moves and removes the file: the reader holds it open.
        std::fs::rename(&path, dir.path().join("moved.pack")).unwrap();
        std::fs::remove_file(dir.path().join("moved.pack")).unwrap();
        publisher.whole(18);
        assert_eq!(reader.join().unwrap(), b"PACK\0\0\0\x02rest of it");

        board.clear();
        assert!(board.current().is_none());
    }

    #[test]
    fn an_end_is_final_and_a_dropped_publisher_is_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.pack");
        std::fs::write(&path, b"PACK").unwrap();
        let board = Board::default();
        let open = || std::fs::File::open(&path).unwrap();

        let publisher = board.announce(vec![oid(1)], HashKind::Sha1, open());
        let pack = board.current().unwrap();
        publisher.arrived(4);
        assert_eq!(
            pack.wait_past(4, Duration::from_millis(10)),
            Progress::Arriving(4)
        );
        publisher.failed("bad entry");
        assert_eq!(
            pack.wait_past(0, Duration::ZERO),
            Progress::Failed("bad entry".into())
        );

        let publisher = board.announce(vec![oid(1)], HashKind::Sha1, open());
        let pack = board.current().unwrap();
        drop(publisher);
        assert!(matches!(
            pack.wait_past(0, Duration::ZERO),
            Progress::Failed(_)
        ));

        let publisher = board.announce(vec![oid(1)], HashKind::Sha1, open());
        let pack = board.current().unwrap();
        publisher.whole(4);
        assert_eq!(pack.wait_past(4, Duration::ZERO), Progress::Whole(4));
    }

    /// A task waiting on `board` as `wait` does, still waiting a moment later.
    async fn waiting_as<T, F>(
        board: &Arc<Board>,
        wait: impl FnOnce(Arc<Board>) -> F,
    ) -> tokio::task::JoinHandle<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let waiting = tokio::spawn(wait(Arc::clone(board)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        waiting
    }

    /// A task waiting on `board` for the next pack, still waiting a moment later.
    async fn waiting_on(board: &Arc<Board>) -> tokio::task::JoinHandle<Option<Arc<LivePack>>> {
        waiting_as(board, |board| async move { board.next().await }).await
    }

    /// What a waiting task was told.
    async fn told<T>(waiting: tokio::task::JoinHandle<T>) -> T {
        tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("told within the time")
            .unwrap()
    }

    #[tokio::test]
    async fn the_next_announcement_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.pack");
        std::fs::write(&path, b"").unwrap();
        let board = Arc::new(Board::default());
        let waiting = waiting_on(&board).await;
        let _publisher = board.announce(
            vec![oid(7)],
            HashKind::Sha1,
            std::fs::File::open(&path).unwrap(),
        );
        let pack = told(waiting).await.expect("announced");
        assert!(pack.answers(&[oid(7)]));
        // Announced already: found at once.
        assert!(board.next().await.unwrap().answers(&[oid(7)]));
    }

    /// One told that no pack comes may still wait for one: announced should this instance
    /// fetch the mirror itself after all.
    #[tokio::test]
    async fn a_pack_announced_after_word_of_elsewhere_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.pack");
        std::fs::write(&path, b"").unwrap();
        let board = Arc::new(Board::default());
        board.elsewhere();
        assert!(board.next().await.is_none());
        // Word of elsewhere is no pack: still waiting.
        let waiting = waiting_as(&board, |board| async move { board.announced().await }).await;
        let _publisher = board.announce(
            vec![oid(3)],
            HashKind::Sha1,
            std::fs::File::open(&path).unwrap(),
        );
        assert!(told(waiting).await.answers(&[oid(3)]));
    }

    #[tokio::test]
    async fn a_mirror_from_elsewhere_tells_those_waiting_that_no_pack_comes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.pack");
        std::fs::write(&path, b"").unwrap();
        let board = Arc::new(Board::default());
        let waiting = waiting_on(&board).await;
        board.elsewhere();
        assert!(told(waiting).await.is_none());
        // Said already: told at once.
        assert!(board.next().await.is_none());

        // The mirror's own first fetch after all (the other instance's failed): announced.
        let _publisher = board.announce(
            vec![oid(7)],
            HashKind::Sha1,
            std::fs::File::open(&path).unwrap(),
        );
        assert!(board.next().await.unwrap().answers(&[oid(7)]));
        // A pack announced is not taken back by word of elsewhere.
        board.elsewhere();
        assert!(board.next().await.is_some());
        assert!(board.announced().await.answers(&[oid(7)]));

        // Cleared, a board waits again.
        board.clear();
        waiting_on(&board).await.abort();
    }
}
