//! Stand-in until the RFC 6479 window lands (issue 3).
/// Window.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    top: u64,
    seen: std::collections::BTreeSet<u64>,
}
impl ReplayWindow {
    /// Check.
    pub fn check(&self, c: u64) -> bool {
        !self.seen.contains(&c) && c + 8192 > self.top
    }
    /// Update.
    pub fn update(&mut self, c: u64) -> bool {
        if !self.check(c) {
            return false;
        }
        self.seen.insert(c);
        self.top = self.top.max(c);
        true
    }
}
