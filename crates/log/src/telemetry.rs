//! The log's metrics (through the `metrics` facade; the process that runs the log installs the
//! recorder).

/// The histogram of the entries made durable together (one batch of the sequencer).
pub const BATCH_METRIC: &str = "clover_log_batch_entries";
/// The histogram of the time the backend takes to make a batch durable (a directory: its write
/// and `fdatasync`; PostgreSQL: the transaction).
pub const COMMIT_SECONDS_METRIC: &str = "clover_log_commit_seconds";
/// The histogram of a directory log's `fdatasync` alone.
pub const FSYNC_SECONDS_METRIC: &str = "clover_log_fsync_seconds";
/// The counter of batches a directory log could not write (a full disk, say) and refused, its
/// file cut back to what it held.
pub const UNWRITTEN_METRIC: &str = "clover_log_unwritten_batches_total";
/// The gauge of this process's appends waiting for the sequencer when it starts a batch.
pub const QUEUE_METRIC: &str = "clover_log_sequencer_queue";

/// Gives the log's metrics their help text (for the process's recorder, installed before this
/// is called).
pub fn describe_metrics() {
    metrics::describe_histogram!(BATCH_METRIC, "Log entries made durable together, per batch");
    metrics::describe_histogram!(
        COMMIT_SECONDS_METRIC,
        metrics::Unit::Seconds,
        "Time to make a batch of log entries durable (write and fdatasync, or the PostgreSQL transaction)"
    );
    metrics::describe_histogram!(
        FSYNC_SECONDS_METRIC,
        metrics::Unit::Seconds,
        "fdatasync of a directory log's entries file"
    );
    metrics::describe_counter!(
        UNWRITTEN_METRIC,
        "Batches of log entries that could not be written (a full disk, say) and were refused, the entries file cut back"
    );
    metrics::describe_gauge!(QUEUE_METRIC, "Appends of this process waiting for the sequencer as it starts a batch");
}
