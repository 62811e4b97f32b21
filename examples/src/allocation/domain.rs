//! The allocation domain (seeds 002/003): products own batches; allocating an order line
//! picks the earliest batch that can take it, and every change records an event.

use std::borrow::Cow;

use postroom_bus::{BusError, Command, Event, ExternalEvent};
use postroom_client::Message;
use serde::{Deserialize, Serialize};

/// A customer's order line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    /// The order.
    pub order_id: String,
    /// The product.
    pub sku: String,
    /// How many.
    pub qty: u32,
}

/// Stock that arrived (or will arrive: `eta`, a day number) for one product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The batch's reference.
    pub reference: String,
    /// The product.
    pub sku: String,
    /// When it arrives; `None`: in the warehouse.
    pub eta: Option<i64>,
    /// How many were bought.
    pub purchased: u32,
    /// Lines allocated to it.
    pub allocations: Vec<OrderLine>,
}

impl Batch {
    /// Bought minus allocated (negative after the quantity was reduced).
    pub fn available(&self) -> i64 {
        i64::from(self.purchased)
            - self.allocations.iter().map(|line| i64::from(line.qty)).sum::<i64>()
    }

    fn can_allocate(&self, line: &OrderLine) -> bool {
        self.sku == line.sku
            && self.available() >= i64::from(line.qty)
            && !self.allocations.iter().any(|held| held.order_id == line.order_id)
    }
}

/// The aggregate: a product and its batches. Changes record events, taken by the unit of
/// work at commit.
#[derive(Debug, Default)]
pub struct Product {
    /// The product.
    pub sku: String,
    /// Its batches.
    pub batches: Vec<Batch>,
    /// Bumped by every change.
    pub version: u32,
    events: Vec<Box<dyn Event>>,
}

impl Product {
    /// A product with `batches`.
    pub fn new(sku: impl Into<String>, batches: Vec<Batch>, version: u32) -> Product {
        Product { sku: sku.into(), batches, version, events: Vec::new() }
    }

    /// Allocates `line` to the earliest batch that can take it (warehouse stock first),
    /// recording `Allocated`, or records `OutOfStock`.
    pub fn allocate(&mut self, line: OrderLine) -> Option<String> {
        let mut candidates: Vec<&mut Batch> =
            self.batches.iter_mut().filter(|batch| batch.can_allocate(&line)).collect();
        candidates.sort_by_key(|batch| (batch.eta.is_some(), batch.eta));
        let Some(batch) = candidates.into_iter().next() else {
            self.events.push(Box::new(OutOfStock { sku: line.sku }));
            return None;
        };
        let reference = batch.reference.clone();
        self.events.push(Box::new(Allocated {
            order_id: line.order_id.clone(),
            sku: line.sku.clone(),
            qty: line.qty,
            batch_ref: reference.clone(),
        }));
        batch.allocations.push(line);
        self.version += 1;
        Some(reference)
    }

    /// Changes a batch's quantity; lines that no longer fit are taken off it, each recording
    /// `Deallocated` (so that they are allocated again elsewhere).
    ///
    /// # Errors
    /// When the product has no such batch.
    pub fn change_batch_quantity(&mut self, reference: &str, qty: u32) -> Result<(), String> {
        let batch = self
            .batches
            .iter_mut()
            .find(|batch| batch.reference == reference)
            .ok_or_else(|| format!("no batch {reference} for {}", self.sku))?;
        batch.purchased = qty;
        while batch.available() < 0 {
            let Some(line) = batch.allocations.pop() else { break };
            self.events.push(Box::new(Deallocated {
                order_id: line.order_id,
                sku: line.sku,
                qty: line.qty,
            }));
        }
        self.version += 1;
        Ok(())
    }

    /// The events recorded since last taken.
    pub fn take_events(&mut self) -> Vec<Box<dyn Event>> {
        std::mem::take(&mut self.events)
    }
}

/// Event: a line was allocated. Leaves the service (`allocation` / `line_allocated`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocated {
    /// The order.
    pub order_id: String,
    /// The product.
    pub sku: String,
    /// How many.
    pub qty: u32,
    /// The batch it went to.
    pub batch_ref: String,
}

impl Message for Allocated {
    const EXCHANGE: &'static str = super::EXCHANGE;
    const MESSAGE_TYPE: &'static str = "allocation.allocated";
    fn routing_key(&self) -> Cow<'_, str> {
        super::ALLOCATED_KEY.into()
    }
}

impl Event for Allocated {
    fn name(&self) -> &'static str {
        "Allocated"
    }
    fn to_external(&self) -> Result<Option<ExternalEvent>, BusError> {
        ExternalEvent::json(self, &self.sku).map(Some)
    }
}

/// Event (internal): a line was taken off a batch and must be allocated again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deallocated {
    /// The order.
    pub order_id: String,
    /// The product.
    pub sku: String,
    /// How many.
    pub qty: u32,
}

impl Event for Deallocated {
    fn name(&self) -> &'static str {
        "Deallocated"
    }
}

/// Event (internal): a line could not be allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfStock {
    /// The product.
    pub sku: String,
}

impl Event for OutOfStock {
    fn name(&self) -> &'static str {
        "OutOfStock"
    }
}

/// Command: new stock.
#[derive(Debug, Clone)]
pub struct CreateBatch {
    /// The batch's reference.
    pub reference: String,
    /// The product.
    pub sku: String,
    /// How many.
    pub qty: u32,
    /// When it arrives (`None`: in the warehouse).
    pub eta: Option<i64>,
}

impl Command for CreateBatch {
    type Output = ();
    const NAME: &'static str = "CreateBatch";
}

/// Command: allocate an order line; answers the batch reference (`None`: out of stock).
#[derive(Debug, Clone)]
pub struct Allocate {
    /// The line.
    pub line: OrderLine,
}

impl Command for Allocate {
    type Output = Option<String>;
    const NAME: &'static str = "Allocate";
}

/// Command: a batch's quantity changed.
#[derive(Debug, Clone)]
pub struct ChangeBatchQuantity {
    /// The batch.
    pub reference: String,
    /// Its new quantity.
    pub qty: u32,
}

impl Command for ChangeBatchQuantity {
    type Output = ();
    const NAME: &'static str = "ChangeBatchQuantity";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(reference: &str, qty: u32, eta: Option<i64>) -> Batch {
        Batch {
            reference: reference.into(),
            sku: "LAMP".into(),
            eta,
            purchased: qty,
            allocations: Vec::new(),
        }
    }

    fn line(order: &str, qty: u32) -> OrderLine {
        OrderLine { order_id: order.into(), sku: "LAMP".into(), qty }
    }

    fn names(product: &mut Product) -> Vec<&'static str> {
        product.take_events().iter().map(|event| event.name()).collect()
    }

    #[test]
    fn warehouse_stock_is_preferred_then_the_earliest_shipment() {
        let mut product = Product::new(
            "LAMP",
            vec![batch("late", 10, Some(3)), batch("early", 10, Some(1)), batch("here", 1, None)],
            0,
        );
        assert_eq!(product.allocate(line("o1", 1)).as_deref(), Some("here"));
        assert_eq!(product.allocate(line("o2", 5)).as_deref(), Some("early"));
        assert_eq!(names(&mut product), ["Allocated", "Allocated"]);
        assert_eq!(product.version, 2);
    }

    #[test]
    fn an_order_that_fits_nowhere_records_out_of_stock() {
        let mut product = Product::new("LAMP", vec![batch("b", 1, None)], 0);
        assert_eq!(product.allocate(line("o1", 2)), None);
        assert_eq!(names(&mut product), ["OutOfStock"]);
    }

    #[test]
    fn reducing_a_batch_deallocates_lines_until_it_fits() {
        let mut product = Product::new("LAMP", vec![batch("b", 10, None)], 0);
        product.allocate(line("o1", 4));
        product.allocate(line("o2", 4));
        product.take_events();
        product.change_batch_quantity("b", 5).unwrap();
        assert_eq!(names(&mut product), ["Deallocated"]);
        assert_eq!(product.batches[0].available(), 1);
        assert!(product.change_batch_quantity("nope", 1).is_err());
    }
}
