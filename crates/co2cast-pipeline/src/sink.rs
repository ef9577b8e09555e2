//! Where a stage's output goes. A flush is a checkpoint barrier for every sink: each makes
//! what it was given durable (`barrier`), and only then does the stage write the checkpoint
//! that covers it. A restart from that checkpoint never misses output, and output it gives
//! again is a keyed revision that changes nothing.

use crate::error::PipelineError;

pub trait Sink {
    /// Makes everything given since the last barrier durable, as part of checkpoint
    /// `checkpoint` (the number the stage's next checkpoint will carry).
    fn barrier(&mut self, checkpoint: u64) -> Result<(), PipelineError>;
}
