//! What the testbed's programs share: `dkvs node` processes as a user runs them.

pub mod process;
