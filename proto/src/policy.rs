//! Stand-in until the compiled policy lands (issue 3).
use crate::ids::{ServiceId, UserId};
/// Policy.
#[derive(Debug, Default)]
pub struct CompiledPolicy {
    pub pairs: std::collections::HashSet<(u32, u32)>,
}
impl CompiledPolicy {
    /// Allowed.
    pub fn allowed(&self, u: UserId, s: ServiceId) -> bool {
        self.pairs.contains(&(u.0, s.0))
    }
}
