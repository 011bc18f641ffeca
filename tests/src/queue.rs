//! Putting requests into the ledger writer's queue in a known order, without waiting for them.
//!
//! Why: a test that wants several requests in one group commit holds the writer inside a
//! commit ([`crate::FaultyEngine::hold_commits`]), queues the requests, then releases it; the
//! writer's next group takes everything queued. Spawning a task per request and sleeping "long
//! enough" for them to reach the queue is a wall-clock bound that fails on a loaded machine and
//! leaves their order to the scheduler. [`enqueue`] instead polls the request's future once on
//! the caller's thread: `Ledger::append` validates and sends the job into the (bounded, never
//! full in these tests) queue in that first poll, then waits for the answer. So when `enqueue`
//! returns, the job is in the queue, behind every job enqueued before it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A request whose job is in the writer's queue (or that was answered at once, e.g. refused by
/// validation). Await it, inside a runtime, for the answer.
pub enum Queued<T> {
    /// In the queue, waiting for the writer's answer.
    Waiting(Pin<Box<dyn Future<Output = T> + Send>>),
    /// Answered in the first poll; `None` once taken.
    Answered(Option<T>),
}

/// Polls `request` once (see the module doc) and returns what to await for its answer.
pub fn enqueue<F>(request: F) -> Queued<F::Output>
where
    F: Future + Send + 'static,
{
    let mut request: Pin<Box<dyn Future<Output = F::Output> + Send>> = Box::pin(request);
    // A no-op waker: whoever awaits the `Queued` later polls again with its own waker.
    let mut cx = Context::from_waker(Waker::noop());
    match request.as_mut().poll(&mut cx) {
        Poll::Ready(answer) => Queued::Answered(Some(answer)),
        Poll::Pending => Queued::Waiting(request),
    }
}

// Nothing pins the answer `T` in place (it is only moved out), so a `Queued` may move freely.
impl<T> Unpin for Queued<T> {}

impl<T> Future for Queued<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        // Both variants are Unpin (a boxed future and an Option), so this is a plain borrow.
        match self.get_mut() {
            Queued::Waiting(request) => request.as_mut().poll(cx),
            Queued::Answered(answer) => Poll::Ready(
                answer
                    .take()
                    .expect("a Queued answer is awaited at most once"),
            ),
        }
    }
}
