//! Basic auth that strangers cannot stall: bcrypt runs on a few threads of its own at the
//! lowest priority (SCHED_IDLE), behind a bounded queue, never on the async workers, so
//! wrong passwords only take CPU nothing else wants; credentials that verified are remembered
//! (by a digest of user, password and stored hash, as the exporter-toolkit keys its
//! cache), so a client with the right password pays bcrypt once and never waits behind
//! wrong attempts. Wrong attempts are not remembered, so they cannot evict right ones.

use std::collections::{BTreeMap, HashSet, VecDeque};

use parking_lot::Mutex;

use crossbeam_channel::{Sender, TrySendError};
use ring::digest;

use crate::web_config::basic_credentials;

/// Verified credentials remembered at once (oldest forgotten first).
const CACHE: usize = 256;
/// Verifications waiting for a thread at once; more are refused (busy) at once.
const WAITING: usize = 64;

/// The outcome of one request's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// In.
    Allowed,
    /// Wrong or missing credentials, or an unknown user.
    Denied,
    /// Too many verifications queued: refused without checking.
    Busy,
}

#[derive(Default)]
struct Cache {
    keys: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

/// A password to verify against a hash, and where the answer goes.
struct Job {
    password: String,
    hash: String,
    answer: tokio::sync::oneshot::Sender<bool>,
}

/// Checks `Authorization` headers against a web config's users.
pub struct Authenticator {
    cache: Mutex<Cache>,
    /// To the verifying threads (one per CPU; they end when this does).
    jobs: Sender<Job>,
    /// Keeps the queue open even with no verifying thread (a test's full queue).
    _queue: crossbeam_channel::Receiver<Job>,
}

impl Default for Authenticator {
    /// One verifying thread per CPU.
    fn default() -> Self {
        Self::with_verifiers(std::thread::available_parallelism().map_or(1, usize::from))
    }
}

fn key(user: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [user, password, hash] {
        // Length-prefixed: ("ab", "c") and ("a", "bc") differ.
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// Puts the calling thread in SCHED_IDLE (and at nice 19, where that is refused): it
/// runs only on CPU time nothing else wants, and any other thread that wakes takes its
/// CPU at once. At nice 19 alone, a scrape's thread waited up to 12 ms for a CPU that
/// bcrypt held under 100 wrong passwords a second (`perf sched latency`, 2 vCPUs).
fn lowest_priority() {
    // SAFETY: changes the calling thread's own scheduling; `param` outlives the call.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as u32, 19);
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

impl Authenticator {
    /// With `threads` verifying threads (none: the queue only fills, for tests).
    fn with_verifiers(threads: usize) -> Self {
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(WAITING);
        for i in 0..threads {
            let queue = queue.clone();
            let verify = move || {
                lowest_priority();
                for job in queue {
                    // The client went away (its deadline passed): nothing to answer.
                    if job.answer.is_closed() {
                        continue;
                    }
                    let right = bcrypt::verify(job.password, &job.hash).unwrap_or(false);
                    let _ = job.answer.send(right);
                }
            };
            std::thread::Builder::new()
                .name(format!("bcrypt-{i}"))
                .spawn(verify)
                .expect("spawning a password verifier");
        }
        Self {
            cache: Mutex::default(),
            jobs,
            _queue: queue,
        }
    }

    fn remembered(&self, key: &[u8; 32]) -> bool {
        self.cache.lock().keys.contains(key)
    }

    fn remember(&self, key: [u8; 32]) {
        let mut cache = self.cache.lock();
        if cache.keys.insert(key) {
            cache.order.push_back(key);
            if cache.order.len() > CACHE {
                let oldest = cache.order.pop_front().expect("not empty");
                cache.keys.remove(&oldest);
            }
        }
    }

    /// Whether `authorization` lets a request in under `users` (user → bcrypt hash;
    /// empty: no authentication).
    pub async fn check(
        &self,
        users: &BTreeMap<String, String>,
        authorization: Option<&[u8]>,
    ) -> Verdict {
        if users.is_empty() {
            return Verdict::Allowed;
        }
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return Verdict::Denied;
        };
        // An unknown user's password is checked against another user's hash (its cost
        // and its time), and refused whatever the result.
        let (hash, known) = match users.get(&user) {
            Some(h) => (h.clone(), true),
            None => (users.values().next().expect("not empty").clone(), false),
        };
        let key = key(&user, &password, &hash);
        if known && self.remembered(&key) {
            return Verdict::Allowed;
        }
        let (answer, right) = tokio::sync::oneshot::channel();
        match self.jobs.try_send(Job {
            password,
            hash,
            answer,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Verdict::Busy,
            Err(TrySendError::Disconnected(_)) => unreachable!("the verifiers end with self"),
        }
        if right.await.unwrap_or(false) && known {
            self.remember(key);
            Verdict::Allowed
        } else {
            Verdict::Denied
        }
    }

    /// Verified credentials remembered now.
    #[cfg(test)]
    fn remembered_count(&self) -> usize {
        self.cache.lock().keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RIGHT: &[u8] = b"Basic cHJvbWV0aGV1czpzZWNyZXQ="; // prometheus:secret
    const WRONG: &[u8] = b"Basic cHJvbWV0aGV1czp3cm9uZw=="; // prometheus:wrong
    const UNKNOWN: &[u8] = b"Basic bm9ib2R5OnNlY3JldA=="; // nobody:secret

    #[tokio::test]
    async fn right_credentials_are_remembered_and_wrong_ones_never() {
        let users =
            BTreeMap::from([("prometheus".to_string(), bcrypt::hash("secret", 4).unwrap())]);
        let auth = Authenticator::default();
        assert_eq!(auth.check(&BTreeMap::new(), None).await, Verdict::Allowed);
        assert_eq!(auth.check(&users, None).await, Verdict::Denied);
        assert_eq!(auth.check(&users, Some(WRONG)).await, Verdict::Denied);
        assert_eq!(auth.check(&users, Some(UNKNOWN)).await, Verdict::Denied);
        assert_eq!(auth.remembered_count(), 0);
        assert_eq!(auth.check(&users, Some(RIGHT)).await, Verdict::Allowed);
        assert_eq!(auth.remembered_count(), 1);
        // Remembered: allowed even with the verifiers' queue full.
        let _full = fill(&auth);
        assert_eq!(auth.check(&users, Some(RIGHT)).await, Verdict::Allowed);
        // A changed hash (new password) is a different key.
        let changed = bcrypt::hash("other", 4).unwrap();
        assert!(!auth.remembered(&key("prometheus", "secret", &changed)));
    }

    #[tokio::test]
    async fn beyond_the_queue_verifications_are_refused_at_once() {
        let users =
            BTreeMap::from([("prometheus".to_string(), bcrypt::hash("secret", 4).unwrap())]);
        // No verifier drains the queue between filling it and the check.
        let auth = Authenticator::with_verifiers(0);
        let _full = fill(&auth);
        assert_eq!(auth.check(&users, Some(RIGHT)).await, Verdict::Busy);
    }

    /// Fills the verifiers' queue with slow jobs (cost 12, a quarter second each); their
    /// answers, to keep until the test ends (dropped, the rest are skipped).
    fn fill(auth: &Authenticator) -> Vec<tokio::sync::oneshot::Receiver<bool>> {
        let hash = bcrypt::hash("x", 12).unwrap();
        let mut answers = Vec::new();
        loop {
            let (answer, rx) = tokio::sync::oneshot::channel();
            let job = Job {
                password: "y".into(),
                hash: hash.clone(),
                answer,
            };
            if auth.jobs.try_send(job).is_err() {
                return answers;
            }
            answers.push(rx);
        }
    }

    #[test]
    fn verifiers_run_at_the_lowest_priority() {
        let _auth = Authenticator::default();
        // (nice, policy) of each verifier: fields 19 and 41 of its stat, the 17th and
        // 39th after the name's closing parenthesis.
        let read = || -> Vec<(i64, i64)> {
            std::fs::read_dir("/proc/thread-self/..")
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
                .filter(|stat| stat.contains("(bcrypt-"))
                .map(|stat| {
                    let f: Vec<i64> = stat
                        .rsplit_once(')')
                        .unwrap()
                        .1
                        .split_whitespace()
                        .map(|x| x.parse().unwrap_or(-1))
                        .collect();
                    (f[16], f[38])
                })
                .collect()
        };
        // The threads name themselves and set their priority as they start.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut seen = read();
        while (seen.is_empty() || seen.iter().any(|&p| p != (19, i64::from(libc::SCHED_IDLE))))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
            seen = read();
        }
        assert!(!seen.is_empty());
        assert!(
            seen.iter().all(|&p| p == (19, i64::from(libc::SCHED_IDLE))),
            "{seen:?}"
        );
    }

    #[test]
    fn the_cache_forgets_its_oldest_beyond_its_bound() {
        let auth = Authenticator::default();
        for i in 0..CACHE + 10 {
            auth.remember(key(&i.to_string(), "p", "h"));
        }
        assert_eq!(auth.remembered_count(), CACHE);
        assert!(!auth.remembered(&key("0", "p", "h")));
        assert!(auth.remembered(&key(&(CACHE + 9).to_string(), "p", "h")));
    }
}
