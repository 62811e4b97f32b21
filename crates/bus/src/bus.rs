//! [`MessageBus`]: routes a command to its one handler, then every event the committed work
//! raised to each of that event's handlers, breadth-first, until no new events remain.

use std::any::{Any, TypeId};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use crate::error::BusError;
use crate::message::{Command, Event};
use crate::uow::UnitOfWork;

/// At most this many events are handled for one command, so an event cycle ends in an error
/// instead of running forever.
///
/// ```
/// assert_eq!(postroom_bus::DEFAULT_EVENT_LIMIT, 10_000);
/// ```
pub const DEFAULT_EVENT_LIMIT: usize = 10_000;

/// Handles one command type.
///
/// ```
/// use postroom_bus::{BusError, Command, CommandHandler, UnitOfWork};
///
/// #[derive(Debug)]
/// struct Rename(String);
/// impl Command for Rename {
///     type Output = usize;
///     const NAME: &'static str = "Rename";
/// }
/// struct RenameHandler;
/// impl<U: UnitOfWork> CommandHandler<Rename, U> for RenameHandler {
///     async fn handle(&self, command: Rename, uow: &mut U) -> Result<usize, BusError> {
///         uow.commit().await?;
///         Ok(command.0.len())
///     }
/// }
/// ```
pub trait CommandHandler<C: Command, U>: Send + Sync + 'static {
    /// Handles `command` within `uow` (commit it for the changes, and their events, to
    /// count).
    ///
    /// # Errors
    /// Whatever the use case reports ([`BusError::handler`]); the bus then rolls back the
    /// work left uncommitted.
    fn handle(
        &self,
        command: C,
        uow: &mut U,
    ) -> impl Future<Output = Result<C::Output, BusError>> + Send;
}

/// Handles one event type; many may be registered for it.
///
/// ```
/// use postroom_bus::{BusError, Event, EventHandler, UnitOfWork};
///
/// #[derive(Debug)]
/// struct OutOfStock { sku: String }
/// impl Event for OutOfStock {
///     fn name(&self) -> &'static str { "OutOfStock" }
/// }
/// struct Notify;
/// impl<U: UnitOfWork> EventHandler<OutOfStock, U> for Notify {
///     async fn handle(&self, event: &OutOfStock, _uow: &mut U) -> Result<(), BusError> {
///         println!("out of stock: {}", event.sku);
///         Ok(())
///     }
/// }
/// ```
pub trait EventHandler<E: Event, U>: Send + Sync + 'static {
    /// Reacts to `event`; may change state through `uow` and commit, raising further
    /// events.
    ///
    /// # Errors
    /// Logged by the bus, which rolls back the handler's uncommitted work; the other
    /// handlers still run.
    fn handle(&self, event: &E, uow: &mut U) -> impl Future<Output = Result<(), BusError>> + Send;
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

trait ErasedCommandHandler<U>: Send + Sync {
    fn call<'a>(
        &'a self,
        command: Box<dyn Any + Send>,
        uow: &'a mut U,
    ) -> BoxFuture<'a, Result<Box<dyn Any + Send>, BusError>>;
}

struct CommandSlot<C, H>(H, PhantomData<fn(C)>);

impl<C: Command, U: Send, H: CommandHandler<C, U>> ErasedCommandHandler<U> for CommandSlot<C, H> {
    fn call<'a>(
        &'a self,
        command: Box<dyn Any + Send>,
        uow: &'a mut U,
    ) -> BoxFuture<'a, Result<Box<dyn Any + Send>, BusError>> {
        Box::pin(async move {
            let command = *command
                .downcast::<C>()
                .map_err(|_| BusError::UnitOfWork("command routed to the wrong handler"))?;
            let output = self.0.handle(command, uow).await?;
            Ok(Box::new(output) as Box<dyn Any + Send>)
        })
    }
}

trait ErasedEventHandler<U>: Send + Sync {
    fn call<'a>(
        &'a self,
        event: &'a dyn Event,
        uow: &'a mut U,
    ) -> BoxFuture<'a, Result<(), BusError>>;
}

struct EventSlot<E, H>(H, PhantomData<fn(E)>);

impl<E: Event, U: Send, H: EventHandler<E, U>> ErasedEventHandler<U> for EventSlot<E, H> {
    fn call<'a>(
        &'a self,
        event: &'a dyn Event,
        uow: &'a mut U,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let any: &dyn Any = event;
            match any.downcast_ref::<E>() {
                Some(event) => self.0.handle(event, uow).await,
                None => Err(BusError::UnitOfWork("event routed to the wrong handler")),
            }
        })
    }
}

/// The in-process message bus.
///
/// Register handlers once at start-up (the composition root), then share the bus (`&self`)
/// between tasks; each dispatch gets its own unit of work.
///
/// ```
/// use postroom_bus::{BusError, Command, CommandHandler, Event, EventHandler, MessageBus, UnitOfWork};
/// # use postroom_bus::InMemoryUnitOfWork;
///
/// #[derive(Debug)]
/// struct Deposit(u64);
/// impl Command for Deposit { type Output = (); const NAME: &'static str = "Deposit"; }
/// #[derive(Debug)]
/// struct Deposited(u64);
/// impl Event for Deposited { fn name(&self) -> &'static str { "Deposited" } }
///
/// struct DepositHandler;
/// impl CommandHandler<Deposit, InMemoryUnitOfWork> for DepositHandler {
///     async fn handle(&self, command: Deposit, uow: &mut InMemoryUnitOfWork) -> Result<(), BusError> {
///         uow.record(Deposited(command.0));
///         uow.commit().await
///     }
/// }
/// struct Audit;
/// impl EventHandler<Deposited, InMemoryUnitOfWork> for Audit {
///     async fn handle(&self, event: &Deposited, _: &mut InMemoryUnitOfWork) -> Result<(), BusError> {
///         assert_eq!(event.0, 5);
///         Ok(())
///     }
/// }
///
/// let mut bus = MessageBus::new();
/// bus.on_command(DepositHandler).unwrap();
/// bus.on_event(Audit);
/// let mut uow = InMemoryUnitOfWork::default();
/// futures_lite::future::block_on(bus.dispatch(Deposit(5), &mut uow)).unwrap();
/// assert_eq!(uow.committed_event_names(), ["Deposited"]);
/// ```
pub struct MessageBus<U> {
    commands: HashMap<TypeId, Box<dyn ErasedCommandHandler<U>>>,
    events: HashMap<TypeId, Vec<Box<dyn ErasedEventHandler<U>>>>,
    event_limit: usize,
}

impl<U> std::fmt::Debug for MessageBus<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageBus")
            .field("commands", &self.commands.len())
            .field("event_types", &self.events.len())
            .finish()
    }
}

impl<U: UnitOfWork + 'static> Default for MessageBus<U> {
    fn default() -> MessageBus<U> {
        MessageBus::new()
    }
}

impl<U: UnitOfWork + 'static> MessageBus<U> {
    /// An empty bus.
    ///
    /// ```
    /// let bus = postroom_bus::MessageBus::<postroom_bus::InMemoryUnitOfWork>::new();
    /// # drop(bus);
    /// ```
    pub fn new() -> MessageBus<U> {
        MessageBus {
            commands: HashMap::new(),
            events: HashMap::new(),
            event_limit: DEFAULT_EVENT_LIMIT,
        }
    }

    /// Changes the most events handled for one command.
    ///
    /// ```
    /// let bus = postroom_bus::MessageBus::<postroom_bus::InMemoryUnitOfWork>::new().with_event_limit(100);
    /// # drop(bus);
    /// ```
    pub fn with_event_limit(mut self, limit: usize) -> MessageBus<U> {
        self.event_limit = limit;
        self
    }

    /// Registers the handler of command `C`.
    ///
    /// ```
    /// # use postroom_bus::*;
    /// # #[derive(Debug)] struct Ship;
    /// # impl Command for Ship { type Output = (); const NAME: &'static str = "Ship"; }
    /// struct ShipHandler;
    /// impl CommandHandler<Ship, InMemoryUnitOfWork> for ShipHandler {
    ///     async fn handle(&self, _: Ship, uow: &mut InMemoryUnitOfWork) -> Result<(), BusError> { uow.commit().await }
    /// }
    /// let mut bus = MessageBus::new();
    /// bus.on_command(ShipHandler).unwrap();
    /// assert!(bus.on_command(ShipHandler).is_err(), "one handler per command");
    /// ```
    ///
    /// # Errors
    /// [`BusError::DuplicateHandler`] when `C` already has one.
    pub fn on_command<C: Command, H: CommandHandler<C, U>>(
        &mut self,
        handler: H,
    ) -> Result<&mut MessageBus<U>, BusError> {
        let slot = Box::new(CommandSlot::<C, H>(handler, PhantomData));
        match self.commands.entry(TypeId::of::<C>()) {
            std::collections::hash_map::Entry::Occupied(_) => {
                Err(BusError::DuplicateHandler(C::NAME))
            }
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(slot);
                Ok(self)
            }
        }
    }

    /// Adds a handler of event `E` (they run in registration order).
    ///
    /// ```
    /// # use postroom_bus::*;
    /// # #[derive(Debug)] struct Shipped;
    /// # impl Event for Shipped { fn name(&self) -> &'static str { "Shipped" } }
    /// struct Email;
    /// impl EventHandler<Shipped, InMemoryUnitOfWork> for Email {
    ///     async fn handle(&self, _: &Shipped, _: &mut InMemoryUnitOfWork) -> Result<(), BusError> { Ok(()) }
    /// }
    /// let mut bus = MessageBus::new();
    /// bus.on_event(Email);
    /// ```
    pub fn on_event<E: Event, H: EventHandler<E, U>>(&mut self, handler: H) -> &mut MessageBus<U> {
        let slot = Box::new(EventSlot::<E, H>(handler, PhantomData));
        self.events.entry(TypeId::of::<E>()).or_default().push(slot);
        self
    }

    /// Handles `command`, then the events of the committed work, and the events those raise.
    /// An event handler's failure is logged and does not stop the others: the command's work
    /// is committed by then.
    ///
    /// A handler that fails (returns `Err`) has its uncommitted work rolled back by the bus,
    /// so an early return with `?` after `begin` leaves no transaction open.
    ///
    /// ```
    /// # use postroom_bus::*;
    /// # #[derive(Debug)] struct Ship;
    /// # impl Command for Ship { type Output = u32; const NAME: &'static str = "Ship"; }
    /// # struct ShipHandler;
    /// # impl CommandHandler<Ship, InMemoryUnitOfWork> for ShipHandler {
    /// #     async fn handle(&self, _: Ship, uow: &mut InMemoryUnitOfWork) -> Result<u32, BusError> { uow.commit().await?; Ok(7) }
    /// # }
    /// let mut bus = MessageBus::new();
    /// bus.on_command(ShipHandler).unwrap();
    /// let mut uow = InMemoryUnitOfWork::default();
    /// assert_eq!(futures_lite::future::block_on(bus.dispatch(Ship, &mut uow)).unwrap(), 7);
    /// ```
    ///
    /// # Errors
    /// [`BusError::NoHandler`], the command handler's error, or [`BusError::EventLimit`].
    pub async fn dispatch<C: Command>(
        &self,
        command: C,
        uow: &mut U,
    ) -> Result<C::Output, BusError> {
        let handler = self.commands.get(&TypeId::of::<C>()).ok_or(BusError::NoHandler(C::NAME))?;
        let output = match handler.call(Box::new(command), uow).await {
            Ok(output) => output,
            Err(error) => {
                abandon(uow, C::NAME).await;
                return Err(error);
            }
        };
        let output = output
            .downcast::<C::Output>()
            .map_err(|_| BusError::UnitOfWork("command output of the wrong type"))?;
        self.drain_events(uow).await?;
        Ok(*output)
    }

    /// Handles an event from outside (and the events its handlers raise).
    ///
    /// ```
    /// # use postroom_bus::*;
    /// # #[derive(Debug)] struct PriceChanged;
    /// # impl Event for PriceChanged { fn name(&self) -> &'static str { "PriceChanged" } }
    /// let bus = MessageBus::new();
    /// let mut uow = InMemoryUnitOfWork::default();
    /// // An event from another service, arriving through the broker:
    /// futures_lite::future::block_on(bus.publish(PriceChanged, &mut uow)).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`BusError::EventLimit`].
    pub async fn publish<E: Event>(&self, event: E, uow: &mut U) -> Result<(), BusError> {
        self.handle_event(&event, uow).await;
        self.drain_events(uow).await
    }

    async fn drain_events(&self, uow: &mut U) -> Result<(), BusError> {
        let mut queue: VecDeque<Box<dyn Event>> = uow.collect_new_events().into();
        let mut handled = 0;
        while let Some(event) = queue.pop_front() {
            handled += 1;
            if handled > self.event_limit {
                return Err(BusError::EventLimit(self.event_limit));
            }
            self.handle_event(event.as_ref(), uow).await;
            queue.extend(uow.collect_new_events());
        }
        Ok(())
    }

    async fn handle_event(&self, event: &dyn Event, uow: &mut U) {
        let any: &dyn Any = event;
        let Some(handlers) = self.events.get(&any.type_id()) else {
            tracing::debug!(event = event.name(), "no handler for event");
            return;
        };
        for handler in handlers {
            if let Err(error) = handler.call(event, uow).await {
                tracing::error!(event = event.name(), %error, "event handler failed");
                abandon(uow, event.name()).await;
            }
        }
    }
}

/// Rolls back whatever work a failed handler left open. A handler that returns early with
/// `?` after beginning its work would otherwise leave the transaction open, and every later
/// `begin` on a long-lived unit of work would fail.
async fn abandon<U: UnitOfWork>(uow: &mut U, what: &str) {
    if let Err(error) = uow.rollback().await {
        tracing::error!(handler_of = what, %error, "rolling back a failed handler's work failed");
    }
}
