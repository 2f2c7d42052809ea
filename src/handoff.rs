//! The queue from enrich workers to an aggregate worker: bounded, and a sender that
//! finds it full sleeps until it has drained to half. With a plain bounded channel a
//! saturated aggregate worker woke its blocked sender at every batch it took (a
//! futex wake, on a VM an interrupt to the other CPU: 7% of its time in `replay`);
//! this way it wakes them once per half a queue.

use std::{
    sync::{
        atomic::{fence, AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use crossbeam_channel::TrySendError;
use parking_lot::{Condvar, Mutex};

/// A queue of at most `capacity` items. A sender that finds it full waits for the
/// receiver's wake, or `net` at most (a safety net: a wait never depends on it).
pub fn bounded<T>(capacity: usize, net: Duration) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let room = Arc::new(Room {
        low: capacity / 2,
        net,
        waiting: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        lock: Mutex::new(()),
        freed: Condvar::new(),
    });
    (
        Sender {
            tx,
            room: room.clone(),
        },
        Receiver { rx, room },
    )
}

/// Where senders wait for room.
struct Room {
    /// Queue length at or below which waiting senders are woken.
    low: usize,
    net: Duration,
    /// Senders waiting (the receiver takes the lock only when there are some).
    waiting: AtomicUsize,
    /// The receiver is gone.
    closed: AtomicBool,
    lock: Mutex<()>,
    freed: Condvar,
}

impl Room {
    fn wake(&self) {
        let _held = self.lock.lock();
        self.freed.notify_all();
    }
}

/// The sending side (cloned per enrich worker).
pub struct Sender<T> {
    tx: crossbeam_channel::Sender<T>,
    room: Arc<Room>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            room: self.room.clone(),
        }
    }
}

impl<T> Sender<T> {
    /// Queues `item`, waiting while the queue is full; gives it back if the receiver
    /// is gone.
    pub fn send(&self, mut item: T) -> Result<(), T> {
        loop {
            match self.tx.try_send(item) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(back)) => return Err(back),
                Err(TrySendError::Full(back)) => item = back,
            }
            self.wait_for_room();
        }
    }

    /// Sleeps until the receiver has drained the queue to half (or is gone).
    fn wait_for_room(&self) {
        let room = &*self.room;
        let mut held = room.lock.lock();
        room.waiting.fetch_add(1, SeqCst);
        // Paired with the receiver's fence: either it sees this sender waiting, or
        // this sender sees the room its last take made.
        fence(SeqCst);
        if self.tx.len() > room.low && !room.closed.load(SeqCst) {
            room.freed.wait_for(&mut held, room.net);
        }
        room.waiting.fetch_sub(1, SeqCst);
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// Whether none are queued.
    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}

/// The receiving side (one aggregate worker).
pub struct Receiver<T> {
    rx: crossbeam_channel::Receiver<T>,
    room: Arc<Room>,
}

impl<T> Receiver<T> {
    /// The next item, waiting for one; `None` once every sender is gone and the queue
    /// is empty.
    pub fn recv(&self) -> Option<T> {
        let item = self.rx.recv().ok()?;
        self.took();
        Some(item)
    }

    /// Wakes waiting senders once the queue is down to half.
    fn took(&self) {
        // Paired with the sender's fence (see `Sender::wait_for_room`).
        fence(SeqCst);
        if self.room.waiting.load(SeqCst) != 0 && self.rx.len() <= self.room.low {
            self.room.wake();
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.room.closed.store(true, SeqCst);
        self.room.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{thread, time::Instant};

    /// Long enough that a test passing within it was woken, not timed out.
    const NEVER: Duration = Duration::from_secs(3600);

    /// Receives with a deadline, so a lost wake fails the test instead of hanging it.
    fn recv_within<T: Send + 'static>(rx: &Receiver<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(item) = rx.rx.try_recv() {
                rx.took();
                return item;
            }
            assert!(
                Instant::now() < deadline,
                "nothing arrived: a wake was lost"
            );
            thread::yield_now();
        }
    }

    #[test]
    fn a_blocked_sender_waits_for_half_the_queue() {
        let (tx, rx) = bounded(8, NEVER);
        for i in 0..8 {
            tx.send(i).unwrap();
        }
        let blocked = thread::spawn(move || tx.send(8).unwrap());
        while rx.room.waiting.load(SeqCst) == 0 {
            thread::yield_now();
        }
        for want in 0..3 {
            assert_eq!(recv_within(&rx), want);
        }
        // Five queued, room for three more: the sender still sleeps.
        thread::sleep(Duration::from_millis(50));
        assert_eq!(rx.rx.len(), 5);
        assert_eq!(recv_within(&rx), 3);
        let rest: Vec<_> = (0..5).map(|_| recv_within(&rx)).collect();
        assert_eq!(rest, [4, 5, 6, 7, 8]);
        blocked.join().unwrap();
    }

    #[test]
    fn a_blocked_sender_gets_its_item_back_when_the_receiver_goes() {
        let (tx, rx) = bounded(2, NEVER);
        tx.send(0).unwrap();
        tx.send(1).unwrap();
        let (done, result) = std::sync::mpsc::channel();
        thread::spawn(move || done.send(tx.send(2)).unwrap());
        while rx.room.waiting.load(SeqCst) == 0 {
            thread::yield_now();
        }
        drop(rx);
        let sent = result.recv_timeout(Duration::from_secs(20));
        assert_eq!(sent, Ok(Err(2)), "the sender was not woken");
    }

    #[test]
    fn many_senders_deliver_everything_in_order() {
        const EACH: u32 = 20_000;
        let (tx, rx) = bounded(4, NEVER);
        let senders: Vec<_> = (0..3)
            .map(|s| {
                let tx = tx.clone();
                thread::spawn(move || (0..EACH).for_each(|i| tx.send((s, i)).unwrap()))
            })
            .collect();
        drop(tx);
        let mut next = [0u32; 3];
        for _ in 0..3 * EACH {
            let (s, i) = recv_within(&rx);
            assert_eq!(i, next[s]);
            next[s] += 1;
        }
        senders.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(rx.recv(), None);
    }
}
