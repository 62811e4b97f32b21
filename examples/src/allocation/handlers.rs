//! The service layer: one handler per command, and the event handlers (reallocation,
//! out-of-stock notice).

use postroom_bus::{BusError, CommandHandler, EventHandler, MessageBus, UnitOfWork};

use super::domain::{
    Allocate, Batch, ChangeBatchQuantity, CreateBatch, Deallocated, OrderLine, OutOfStock, Product,
};
use super::repository::AllocationUnitOfWork;

/// A command about something that does not exist: permanent, never worth a retry.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

struct CreateBatchHandler;

impl CommandHandler<CreateBatch, AllocationUnitOfWork> for CreateBatchHandler {
    async fn handle(
        &self,
        command: CreateBatch,
        uow: &mut AllocationUnitOfWork,
    ) -> Result<(), BusError> {
        uow.begin()?;
        let batch = Batch {
            reference: command.reference,
            sku: command.sku.clone(),
            eta: command.eta,
            purchased: command.qty,
            allocations: Vec::new(),
        };
        match uow.get(&command.sku)? {
            Some(product) => product.batches.push(batch),
            None => {
                uow.add(Product::new(command.sku, vec![batch], 0));
            }
        }
        uow.commit().await
    }
}

struct AllocateHandler;

impl CommandHandler<Allocate, AllocationUnitOfWork> for AllocateHandler {
    async fn handle(
        &self,
        command: Allocate,
        uow: &mut AllocationUnitOfWork,
    ) -> Result<Option<String>, BusError> {
        uow.begin()?;
        let Some(product) = uow.get(&command.line.sku)? else {
            uow.rollback().await?;
            return Err(BusError::handler(Invalid(format!("invalid sku {}", command.line.sku))));
        };
        let reference = product.allocate(command.line);
        uow.commit().await?;
        Ok(reference)
    }
}

struct ChangeBatchQuantityHandler;

impl CommandHandler<ChangeBatchQuantity, AllocationUnitOfWork> for ChangeBatchQuantityHandler {
    async fn handle(
        &self,
        command: ChangeBatchQuantity,
        uow: &mut AllocationUnitOfWork,
    ) -> Result<(), BusError> {
        uow.begin()?;
        let found = match uow.sku_of_batch(&command.reference)? {
            Some(sku) => uow.get(&sku)?,
            None => None,
        };
        let Some(product) = found else {
            uow.rollback().await?;
            return Err(BusError::handler(Invalid(format!("unknown batch {}", command.reference))));
        };
        if let Err(reason) = product.change_batch_quantity(&command.reference, command.qty) {
            uow.rollback().await?;
            return Err(BusError::handler(Invalid(reason)));
        }
        uow.commit().await
    }
}

/// A deallocated line is allocated again, in its own unit of work.
struct Reallocate;

impl EventHandler<Deallocated, AllocationUnitOfWork> for Reallocate {
    async fn handle(
        &self,
        event: &Deallocated,
        uow: &mut AllocationUnitOfWork,
    ) -> Result<(), BusError> {
        uow.begin()?;
        let Some(product) = uow.get(&event.sku)? else {
            return uow.rollback().await;
        };
        let line =
            OrderLine { order_id: event.order_id.clone(), sku: event.sku.clone(), qty: event.qty };
        product.allocate(line);
        uow.commit().await
    }
}

/// Stands in for the seed's e-mail to the buyers.
struct NotifyOutOfStock;

impl EventHandler<OutOfStock, AllocationUnitOfWork> for NotifyOutOfStock {
    async fn handle(
        &self,
        event: &OutOfStock,
        _: &mut AllocationUnitOfWork,
    ) -> Result<(), BusError> {
        tracing::warn!(sku = %event.sku, "out of stock: notifying stock@example.invalid");
        Ok(())
    }
}

/// The bus with every allocation handler registered.
///
/// # Errors
/// Never in practice (each command is registered once).
pub fn build_bus() -> Result<MessageBus<AllocationUnitOfWork>, BusError> {
    let mut bus = MessageBus::new();
    bus.on_command(CreateBatchHandler)?
        .on_command(AllocateHandler)?
        .on_command(ChangeBatchQuantityHandler)?
        .on_event(Reallocate)
        .on_event(NotifyOutOfStock);
    Ok(bus)
}
