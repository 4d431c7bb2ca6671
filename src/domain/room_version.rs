//! Which room versions Lattice supports.

use ruma::RoomVersionId;

/// Room versions Lattice can create and join.
pub const SUPPORTED: &[&str] = &[
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
];

pub fn is_supported(version: &RoomVersionId) -> bool {
    SUPPORTED.contains(&version.as_str())
}
