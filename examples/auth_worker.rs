//! The auth worker (seed 000), runnable against a local broker:
//!
//! ```text
//! postroom serve &
//! cargo run --example auth_worker            # REDIS_URL=redis://127.0.0.1:6379/ to use Redis
//! ```
//!
//! This file is the composition root: it builds the infrastructure (broker connection,
//! store), the application (command) and the presentation (handler, worker), publishes a
//! few sample events as the auth API would, and runs until they are handled or Ctrl-C.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postroom_client::{Backoff, Connector, Envelope, PublishOptions, Publisher, PublisherConfig};
use postroom_examples::auth::application::BlacklistStore;
use postroom_examples::auth::infrastructure::{MemoryBlacklistStore, RedisBlacklistStore};
use postroom_examples::auth::schema::TokenBlacklisted;
use postroom_examples::auth::{self, declare_topology};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    postroom_examples::init_tracing();
    let url = postroom_examples::broker_url();
    let connector = Arc::new(Connector::new(&url, Backoff::default())?.with_name("auth-worker"));
    declare_topology(&connector).await?;
    match std::env::var("REDIS_URL") {
        Ok(redis) => {
            let store = RedisBlacklistStore::connect(&redis).await?;
            run(connector, Arc::new(store)).await
        }
        Err(_) => run(connector, Arc::new(MemoryBlacklistStore::default())).await,
    }
}

async fn run<S: BlacklistStore>(
    connector: Arc<Connector>,
    store: Arc<S>,
) -> Result<(), Box<dyn std::error::Error>> {
    let publisher = Publisher::new(
        Arc::clone(&connector),
        postroom_client::Json,
        PublisherConfig { source: Some("auth-api".into()), ..PublisherConfig::default() },
    )?;
    let in_an_hour = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let logout =
        TokenBlacklisted { jti: "jti-1".into(), user_id: "user-1".into(), expires_at: in_an_hour };
    let sent = publisher.publish(&logout).await?;
    // The same event again (an at-least-once resend): the idempotent receiver drops it.
    publisher
        .publish_with(
            &logout,
            Envelope::new().with_message_id(sent.message_id),
            &PublishOptions::default(),
        )
        .await?;
    let expired =
        TokenBlacklisted { jti: "jti-old".into(), user_id: "user-2".into(), expires_at: 1 };
    publisher.publish(&expired).await?;
    let garbage = Envelope::new();
    publisher
        .publish_raw(
            auth::EXCHANGE,
            auth::schema::ROUTING_KEY,
            b"{not json",
            &garbage,
            &PublishOptions::default(),
        )
        .await?;
    println!("published 4 sample events to {}", auth::EXCHANGE);

    let worker = auth::build_worker(connector, store)?;
    let stats = worker.stats();
    let done = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = async {
                while stats.acked() + stats.rejected() < 4 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            } => {}
        }
    };
    let stats = worker.stats();
    worker.run(done).await?;
    println!(
        "handled: {} acknowledged, {} dead-lettered (see queue {})",
        stats.acked(),
        stats.rejected(),
        auth::DEAD_LETTER_QUEUE
    );
    publisher.close().await;
    Ok(())
}
