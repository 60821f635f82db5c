//! Jobs a fan-out hands straight to this instance's sender. A small event's jobs are written
//! already in flight, leased to this instance, and passed over here, so the sender starts
//! them without claiming them back from the queue: one write turn less per batch, and a
//! job's row leaves the due index without ever entering it.
//!
//! The hand-off is bounded: a fan-out hands only as many jobs as there is room for, the rest
//! are queued as before. A handed job is as durable as a claimed one: its lease is renewed
//! while this instance lives, expires when it dies (the job is queued again), and what is
//! still waiting here at shutdown goes back to the queue.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::sync::mpsc::{self, PermitIterator};
use tokio::sync::Notify;

/// The handing end (the fan-out): where it hands jobs.
pub(crate) struct Handoff<T> {
    jobs: mpsc::Sender<T>,
}

impl<T> Clone for Handoff<T> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
        }
    }
}

/// The taking end (the sender): handed jobs not taken yet.
pub(crate) struct Inbox<T> {
    jobs: mpsc::Receiver<T>,
    /// A job [`Inbox::arrival`] received, taken first.
    first: Option<T>,
}

/// A hand-off with room for `capacity` jobs waiting to be taken.
pub(crate) fn channel<T>(capacity: usize) -> (Handoff<T>, Inbox<T>) {
    let (jobs, rx) = mpsc::channel(capacity.max(1));
    (
        Handoff { jobs },
        Inbox {
            jobs: rx,
            first: None,
        },
    )
}

/// Room reserved for handed jobs; what is not used is given back when it is dropped.
pub(crate) struct Room<'a, T> {
    permits: Option<PermitIterator<'a, T>>,
    len: usize,
}

impl<T> Room<'_, T> {
    /// How many jobs it takes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Hands `jobs` over (never more than [`Room::len`]; the store leased no more).
    pub(crate) fn hand(self, jobs: Vec<T>) {
        let Some(permits) = self.permits else {
            return;
        };
        for (permit, job) in permits.zip(jobs) {
            permit.send(job);
        }
    }
}

impl<T> Handoff<T> {
    /// Room for up to `wanted` jobs: as much as is free now, none once the taker stopped.
    pub(crate) fn room(&self, wanted: usize) -> Room<'_, T> {
        let len = wanted.min(self.jobs.capacity());
        if len == 0 {
            return Room {
                permits: None,
                len: 0,
            };
        }
        match self.jobs.try_reserve_many(len) {
            Ok(permits) => Room {
                permits: Some(permits),
                len,
            },
            // Another fan-out took the room meanwhile, or the sender stopped.
            Err(_) => Room {
                permits: None,
                len: 0,
            },
        }
    }
}

impl<T> Inbox<T> {
    /// Up to `n` handed jobs, without waiting.
    pub(crate) fn take(&mut self, n: usize) -> Vec<T> {
        let mut jobs = Vec::new();
        if n == 0 {
            return jobs;
        }
        if let Some(job) = self.first.take() {
            jobs.push(job);
        }
        while jobs.len() < n {
            match self.jobs.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        jobs
    }

    /// Waits until a job is handed over (it is kept for the next [`Inbox::take`]); never
    /// returns once no fan-out can hand any more.
    pub(crate) async fn arrival(&mut self) {
        if self.first.is_some() {
            return;
        }
        match self.jobs.recv().await {
            Some(job) => self.first = Some(job),
            None => std::future::pending().await,
        }
    }

    /// Shutdown: takes no more, and returns every job handed but not taken (waiting up to
    /// `grace` for handers that reserved room to finish their write).
    pub(crate) async fn close(mut self, grace: Duration) -> Vec<T> {
        self.jobs.close();
        let mut left: Vec<T> = self.first.take().into_iter().collect();
        let _ = tokio::time::timeout(grace, async {
            while let Some(job) = self.jobs.recv().await {
                left.push(job);
            }
        })
        .await;
        left
    }
}

/// Whether `wake` holds a notification, taking it if so; never waits.
pub(crate) fn take_notification(wake: &Notify) -> bool {
    let notified = pin!(wake.notified());
    notified
        .poll(&mut Context::from_waker(Waker::noop()))
        .is_ready()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Platform;
    use crate::store::ClaimedJob;

    fn job(id: &str) -> ClaimedJob {
        ClaimedJob {
            id: id.into(),
            app_id: "app".into(),
            event_id: "evt".into(),
            platform: Platform::Fcm,
            token: "t".into(),
            job: "{}".into(),
            attempts: 0,
            created_at: 0,
            event_at: 0,
            expires_at: None,
            user_id: None,
            category: None,
        }
    }

    #[tokio::test]
    async fn room_is_what_is_free_and_unused_room_comes_back() {
        let (handoff, mut inbox) = channel(3);
        let room = handoff.room(5);
        assert_eq!(room.len(), 3);
        assert_eq!(handoff.room(1).len(), 0, "all of it is reserved");
        room.hand(vec![job("a")]);
        // Two permits were not used: they are free again.
        assert_eq!(handoff.room(5).len(), 2);
        let taken: Vec<String> = inbox.take(10).into_iter().map(|j| j.id).collect();
        assert_eq!(taken, ["a"]);
    }

    #[tokio::test]
    async fn an_arrival_is_taken_first_and_closing_returns_what_was_left() {
        let (handoff, mut inbox) = channel(4);
        handoff.room(3).hand(vec![job("a"), job("b"), job("c")]);
        inbox.arrival().await;
        let taken: Vec<String> = inbox.take(1).into_iter().map(|j| j.id).collect();
        assert_eq!(taken, ["a"]);
        inbox.arrival().await;
        let left: Vec<String> = inbox
            .close(Duration::from_millis(10))
            .await
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(left, ["b", "c"]);
        assert_eq!(handoff.room(1).len(), 0, "a closed inbox takes nothing");
    }

    #[tokio::test]
    async fn a_notification_is_taken_once_without_waiting() {
        let wake = Notify::new();
        assert!(!take_notification(&wake));
        wake.notify_one();
        assert!(take_notification(&wake));
        assert!(!take_notification(&wake));
    }
}
