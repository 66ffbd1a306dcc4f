//! Reporting an error in a log line or a status text: an error whose cause is its `source()`,
//! rather than part of its message, is reported with its causes, so that what a `String` of the
//! cause used to give is still there, and said once. One for every room (the gateway, the
//! custodian, the witness).

/// An error and the errors that caused it, as one line: `what failed: why: why that`.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'a));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
