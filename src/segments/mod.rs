//! Segments: definitions (parse, validate), the rule engine and reasons, and
//! the segments in force with what is counted per segment ([`live`], replaced
//! as a whole by a hot reload). Pure.

pub mod compile;
pub mod definition;
pub mod engine;
pub mod live;
pub mod tally;

pub use definition::{Catalogue, DefinitionError, Segment, Tier};
pub use live::{ReloadReport, Segments};

/// The index of a segment in the catalogue in force. Stable for the life of
/// the process: a reload replaces a changed segment in place, appends a new
/// one and retires a removed one at its index (never reused), so the indices
/// in published memberships stay valid across reloads. Not stable across
/// processes: the changelog stores segment ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentIndex(pub usize);

impl Catalogue {
    /// The segment at `index`.
    pub fn segment(&self, index: SegmentIndex) -> &Segment {
        &self.segments[index.0]
    }

    /// The index of the segment with `id`, if there is one.
    pub fn index_of(&self, id: &str) -> Option<SegmentIndex> {
        self.segments.iter().position(|segment| segment.id == id).map(SegmentIndex)
    }
}

#[cfg(test)]
mod tests;
