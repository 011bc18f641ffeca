//! The log's tail, read and encoded once for every live event-feed subscriber.
//!
//! Why: a subscriber that follows the log on its own reads and JSON-encodes every new event
//! itself, so 100 subscribers cost 100 reads and 100 encodings per event; measured, that took
//! 63% of walletd's CPU and cut the commands a server took while they listened by 8x
//! (BENCHMARKS.md, issue 14). The [`Tail`] follows the log once ([`ledger::Subscription`]),
//! encodes each event once into a [`Frame`], and broadcasts it; a caught-up subscriber only
//! frames shared bytes.
//!
//! A subscriber never depends on the broadcast for correctness: it takes its receiver first,
//! then catches up from the log itself by position; once a read finds nothing past its next
//! position it goes live, skipping frames it has already sent. A frame past its next position
//! (it fell behind and the channel dropped frames) or a lag report sends it back to reading the
//! log from where it is. So the feed is gap-free and duplicate-free by position whatever the
//! broadcast does; the broadcast only saves work.

use std::collections::VecDeque;
use std::sync::Arc;

use ledger::{EventRecord, Ledger, Position, ReadError};
use tokio::sync::{broadcast, watch};

/// Frames the broadcast keeps for a slow subscriber before it must read the log instead.
const TAIL_CAPACITY: usize = 8_192;
/// Events a catching-up subscriber reads per step.
const CATCH_UP_CHUNK: usize = 512;

/// One event as the feed sends it.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Log position (the SSE id).
    pub position: u64,
    /// Event type (the SSE event name).
    pub event_type: Arc<str>,
    /// The event as `log --json` shows it (the SSE data).
    pub data: Arc<str>,
}

impl Frame {
    /// Encodes one event.
    pub fn of(record: &EventRecord) -> Frame {
        Frame {
            position: record.position.0,
            event_type: Arc::from(record.event_type.as_str()),
            data: Arc::from(projections::shown::event_json(record).to_string()),
        }
    }
}

/// The shared tail of the log.
pub struct Tail {
    sender: broadcast::Sender<Frame>,
}

impl Tail {
    /// Follows `ledger` from its head on, until the ledger closes or `stop` turns true.
    pub fn start(ledger: &Ledger, stop: watch::Receiver<bool>) -> Arc<Tail> {
        Tail::start_with_capacity(ledger, stop, TAIL_CAPACITY)
    }

    /// [`Tail::start`] keeping at most `capacity` frames for a slow subscriber.
    pub fn start_with_capacity(
        ledger: &Ledger,
        mut stop: watch::Receiver<bool>,
        capacity: usize,
    ) -> Arc<Tail> {
        let (sender, _) = broadcast::channel(capacity);
        let tail = Arc::new(Tail {
            sender: sender.clone(),
        });
        let mut subscription = ledger.subscribe(ledger.head().position.next());
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = subscription.next() => next,
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => None,
                };
                match next {
                    // No receiver now is fine: nobody is live.
                    Some(Ok(record)) => drop(sender.send(Frame::of(&record))),
                    Some(Err(e)) => {
                        // Dropping the sender closes every receiver: live subscribers end their
                        // feeds, and clients reconnect with their last id.
                        tracing::error!(error = %e, "the event feed's tail could not read the log");
                        break;
                    }
                    None => break,
                }
            }
        });
        tail
    }

    /// A subscriber starting at `from`.
    pub fn subscriber(&self, ledger: Ledger, from: Position) -> Subscriber {
        Subscriber {
            ledger,
            next: from.0.max(1),
            live: self.sender.subscribe(),
            is_live: false,
            pending: VecDeque::new(),
        }
    }
}

/// One feed: catch-up from the log, then the shared tail.
pub struct Subscriber {
    ledger: Ledger,
    next: u64,
    live: broadcast::Receiver<Frame>,
    is_live: bool,
    pending: VecDeque<Frame>,
}

/// Why a feed ended.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// Reading the log failed.
    #[error("the log could not be read: {0}")]
    Read(#[from] ReadError),
    /// The tail stopped (the store is closing or its read failed).
    #[error("the feed's tail stopped; reconnect with the last id")]
    TailStopped,
}

impl Subscriber {
    /// The next frame, in position order with no gap; waits when caught up.
    pub async fn next(&mut self) -> Result<Frame, FeedError> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                self.next = frame.position + 1;
                return Ok(frame);
            }
            if !self.is_live {
                let records = self.read_from_log().await?;
                if records.is_empty() {
                    self.is_live = true;
                } else {
                    self.pending.extend(records.iter().map(Frame::of));
                }
                continue;
            }
            match self.live.recv().await {
                Ok(frame) if frame.position < self.next => {}
                Ok(frame) if frame.position == self.next => {
                    self.next += 1;
                    return Ok(frame);
                }
                // Frames were dropped for this subscriber: the log has them.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.is_live = false,
                Err(broadcast::error::RecvError::Closed) => return Err(FeedError::TailStopped),
            }
        }
    }

    async fn read_from_log(&self) -> Result<Vec<EventRecord>, FeedError> {
        let ledger = self.ledger.clone();
        let from = Position(self.next);
        tokio::task::spawn_blocking(move || ledger.read_all(from, CATCH_UP_CHUNK))
            .await
            .map_err(|join| {
                ReadError::Engine(ledger::EngineError::Io {
                    operation: "the event feed's catch-up read",
                    reason: join.to_string(),
                })
            })?
            .map_err(FeedError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::domain::Command;
    use ledger::LedgerOptions;
    use projections::WalletService;

    /// A frame, or a failure after 60 s (a generous cap that only turns a hang into a failure).
    async fn capped(next: impl std::future::Future<Output = Result<Frame, FeedError>>) -> Frame {
        tokio::time::timeout(std::time::Duration::from_secs(60), next)
            .await
            .expect("a frame within 60 s")
            .expect("a frame")
    }

    async fn submit(service: &WalletService, line: &str) {
        let command = Command::parse_json_line(line).expect("a valid test command");
        service.submit(&command).await.expect("applied");
    }

    // Proves a subscriber that falls far behind the shared tail (the broadcast keeps 4 frames
    // and drops the rest for it) still gets every event exactly once in position order, from
    // the log, and one that joins mid-way starts where it asked. (Planted defect caught: a
    // naive live loop, taking any frame at or past the next position and ignoring lag reports,
    // skipped the positions the channel dropped.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_behind_the_tail_reads_the_log_and_misses_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let service =
            WalletService::open(&dir.path().join("store"), LedgerOptions::default()).expect("open");
        let (_stop_tx, stop) = watch::channel(false);
        let tail = Tail::start_with_capacity(service.ledger(), stop, 4);
        let mut early = tail.subscriber(service.ledger().clone(), Position(1));
        submit(&service, r#"{"id":"o","type":"open_wallet","member":"m1"}"#).await;
        assert_eq!(capped(early.next()).await.position, 1);
        // Nothing more to read: it goes live and waits on the tail (the wait is cancel-safe).
        let waited = tokio::time::timeout(std::time::Duration::from_millis(200), early.next());
        assert!(waited.await.is_err(), "no event yet");
        assert!(early.is_live);
        for i in 0..49 {
            let line = format!(r#"{{"id":"t{i}","type":"top_up","member":"m1","amount":1}}"#);
            submit(&service, &line).await;
        }
        let mut late = tail.subscriber(service.ledger().clone(), Position(30));
        let mut seen = Vec::new();
        for _ in 0..49 {
            seen.push(capped(early.next()).await.position);
        }
        assert_eq!(seen, (2..=50).collect::<Vec<u64>>());
        let mut seen_late = Vec::new();
        for _ in 0..21 {
            seen_late.push(capped(late.next()).await.position);
        }
        assert_eq!(seen_late, (30..=50).collect::<Vec<u64>>());
        // Live again: the next event arrives once.
        submit(
            &service,
            r#"{"id":"t-last","type":"top_up","member":"m1","amount":1}"#,
        )
        .await;
        let frame = capped(early.next()).await;
        assert_eq!(frame.position, 51);
        assert_eq!(&*frame.event_type, "wallet.topped_up");
        assert!(
            frame.data.contains("\"command_id\":\"t-last\""),
            "{}",
            frame.data
        );
    }
}
