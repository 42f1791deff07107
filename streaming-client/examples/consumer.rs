//! A consumer of a `serve` streamer that keeps its place in a file:
//! `cargo run -p statestream-client --example consumer -- 127.0.0.1:9090 consumer.cursor`.
//! Each block is printed, then acknowledged; a run resumes after the last
//! acknowledged block.

use statestream_client::{FileCursor, ResumableSubscription, StartFrom, SubscribeOptions, Update};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:9090".into());
    let cursor = args.next().unwrap_or_else(|| "consumer.cursor".into());
    let options = SubscribeOptions::new(&address).start(StartFrom::Snapshot);
    let mut sub = ResumableSubscription::new(options, FileCursor::new(cursor));
    loop {
        let update = sub.next().await?;
        match &update {
            Update::Snapshot {
                height, entries, ..
            } => {
                println!("snapshot at {height}: {} entries", entries.len())
            }
            Update::Block {
                height, changes, ..
            } => println!("block {height}: {} changes", changes.len()),
            Update::Reconnecting { reason, .. } => eprintln!("reconnecting: {reason}"),
            _ => {}
        }
        if let Some(height) = update.ack_height() {
            sub.ack(height)?;
        }
    }
}
