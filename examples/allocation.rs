//! The allocation service (seeds 002/003), runnable against a local broker:
//!
//! ```text
//! postroom serve &
//! cargo run --example allocation
//! ```
//!
//! The composition root: opens the service's SQLite database (in a temp dir), starts the
//! outbox relay and the worker for `BatchQuantityChanged`, sets up two batches and an order,
//! then plays the warehouse: the earlier batch shrinks, the order is reallocated to the later
//! one, and the `Allocated` events arrive on a queue bound to `line_allocated`.

use std::sync::Arc;
use std::time::Duration;

use postroom_client::lapin::options::BasicGetOptions;
use postroom_client::{Backoff, Connector, QueueSpec, bind};
use postroom_examples::allocation::domain::{Allocate, Allocated, CreateBatch, OrderLine};
use postroom_examples::allocation::{self, BatchQuantityChanged};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    postroom_examples::init_tracing();
    let url = postroom_examples::broker_url();
    let connector = Arc::new(Connector::new(&url, Backoff::default())?.with_name("allocation"));
    let dir = std::env::temp_dir().join(format!("postroom-allocation-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let running = allocation::start(Arc::clone(&connector), &dir.join("allocation.db")).await?;
    let service = &running.service;
    // A downstream service's queue, to show what leaves the service.
    let channel = connector.channel().await?;
    QueueSpec::new("warehouse.line_allocated").declare(&channel).await?;
    bind(&channel, "warehouse.line_allocated", allocation::EXCHANGE, allocation::ALLOCATED_KEY)
        .await?;

    let sku = format!("LAMP-{}", std::process::id());
    let (earlier, later) = (format!("{sku}-batch-1"), format!("{sku}-batch-2"));
    service
        .execute(CreateBatch {
            reference: earlier.clone(),
            sku: sku.clone(),
            qty: 10,
            eta: Some(1),
        })
        .await?;
    service
        .execute(CreateBatch { reference: later.clone(), sku: sku.clone(), qty: 10, eta: Some(2) })
        .await?;
    let line = OrderLine { order_id: "order-1".into(), sku: sku.clone(), qty: 10 };
    let batch = service.execute(Allocate { line }).await?;
    println!("order-1 allocated to {batch:?}");

    println!("warehouse: {earlier} now holds 5");
    running.publisher.publish(&BatchQuantityChanged { batchref: earlier, qty: 5 }).await?;

    for _ in 0..2 {
        let event = loop {
            let got = channel
                .basic_get("warehouse.line_allocated".into(), BasicGetOptions { no_ack: true })
                .await?;
            match got {
                Some(message) => {
                    break serde_json::from_slice::<Allocated>(&message.delivery.data)?;
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        println!(
            "line_allocated: {} x{} of {} → {}",
            event.order_id, event.qty, event.sku, event.batch_ref
        );
    }
    println!("order-1 is now in {:?}", service.allocation_of("order-1", &sku).await?);

    running.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
