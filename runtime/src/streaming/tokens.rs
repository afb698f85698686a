//! Single-use, expiring tokens that tie a streaming URL to the CRI request that made it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a URL handed out by Exec/Attach/PortForward stays valid (kubelet's default).
pub const TOKEN_TTL: Duration = Duration::from_secs(30);
/// Most outstanding tokens; the oldest is dropped to make room (kubelet caps at 1000 too).
pub const MAX_TOKENS: usize = 1000;

/// Outstanding requests, keyed by token.
pub struct TokenCache<T> {
    entries: HashMap<String, (T, Instant)>,
    ttl: Duration,
    capacity: usize,
}

impl<T> TokenCache<T> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// Stores `value` under a fresh random token, valid until `now + ttl`.
    pub fn insert(&mut self, value: T, now: Instant) -> String {
        self.entries.retain(|_, (_, expires)| *expires > now);
        if self.entries.len() >= self.capacity
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, expires))| *expires)
                .map(|(k, _)| k.clone())
        {
            self.entries.remove(&oldest);
        }
        loop {
            let token = new_token();
            if !self.entries.contains_key(&token) {
                self.entries.insert(token.clone(), (value, now + self.ttl));
                return token;
            }
        }
    }

    /// Takes the request for `token` if it exists and has not expired; a token works once.
    pub fn take(&mut self, token: &str, now: Instant) -> Option<T> {
        let (value, expires) = self.entries.remove(token)?;
        (expires > now).then_some(value)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// 16 random bytes, URL-safe base64 without padding: unguessable and path-safe.
fn new_token() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the kernel's random source is available");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_works_once() {
        let mut c = TokenCache::new(TOKEN_TTL, 10);
        let now = Instant::now();
        let t = c.insert("exec", now);
        assert_eq!(t.len(), 22);
        assert_eq!(c.take(&t, now), Some("exec"));
        assert_eq!(c.take(&t, now), None);
    }

    #[test]
    fn tokens_expire() {
        let mut c = TokenCache::new(Duration::from_secs(30), 10);
        let now = Instant::now();
        let t = c.insert(1, now);
        assert_eq!(c.take(&t, now + Duration::from_secs(31)), None);
        let t = c.insert(2, now);
        assert_eq!(c.take(&t, now + Duration::from_secs(29)), Some(2));
    }

    #[test]
    fn unknown_tokens_and_distinct_tokens() {
        let mut c = TokenCache::new(TOKEN_TTL, 10);
        let now = Instant::now();
        let a = c.insert(1, now);
        let b = c.insert(2, now);
        assert_ne!(a, b);
        assert_eq!(c.take("nope", now), None);
        assert_eq!(c.take(&b, now), Some(2));
        assert_eq!(c.take(&a, now), Some(1));
    }

    #[test]
    fn capacity_drops_the_oldest() {
        let mut c = TokenCache::new(TOKEN_TTL, 2);
        let now = Instant::now();
        let a = c.insert(1, now);
        let b = c.insert(2, now + Duration::from_millis(1));
        let d = c.insert(3, now + Duration::from_millis(2));
        assert_eq!(c.len(), 2);
        assert_eq!(c.take(&a, now), None);
        assert_eq!(c.take(&b, now), Some(2));
        assert_eq!(c.take(&d, now), Some(3));
    }

    #[test]
    fn expired_entries_are_purged_on_insert() {
        let mut c = TokenCache::new(Duration::from_secs(1), 10);
        let now = Instant::now();
        c.insert(1, now);
        c.insert(2, now + Duration::from_secs(5));
        assert_eq!(c.len(), 1);
    }
}
