//! Request-reply over direct reply-to (`amq.rabbitmq.reply-to`): no reply queue to declare
//! or clean up.
//!
//! [`RpcClient`] owns one channel consuming the pseudo-queue (no-ack, as direct reply-to
//! requires) and a table of waiting calls keyed by correlation id; a reader task routes each
//! reply to its caller. [`Responder`] is the serving side: a [`Handler`] for a
//! [`Worker`](crate::Worker) that calls a function and publishes its answer to the request's
//! `reply_to`.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::Channel;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::codec::{Codec, Json};
use crate::connector::Connector;
use crate::envelope::{Envelope, short};
use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::incoming::Incoming;
use crate::message::Message;
use crate::publisher::{PublishOptions, Publisher};
use crate::result::CommandResult;

/// The pseudo-queue of direct reply-to.
///
/// ```
/// assert_eq!(postroom_client::DIRECT_REPLY_TO, "amq.rabbitmq.reply-to");
/// ```
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Header on a reply whose responder failed; its value is the error text.
///
/// ```
/// assert_eq!(postroom_client::RPC_ERROR, "x-rpc-error");
/// ```
pub const RPC_ERROR: &str = "x-rpc-error";

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<Incoming>>>>;

struct Session {
    channel: Channel,
    waiting: Waiting,
    reader: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Calls a remote [`Responder`] and waits for its answer.
///
/// Safe to share; concurrent calls are told apart by their correlation ids. When the channel
/// is lost, calls in progress fail with [`Error::Timeout`] and the next call opens a new one.
///
/// ```no_run
/// # async fn run() -> postroom_client::Result<()> {
/// use std::borrow::Cow;
/// use std::sync::Arc;
/// use std::time::Duration;
/// use postroom_client::{Backoff, Connector, Json, Message, RpcClient};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Quote { sku: String }
/// impl Message for Quote {
///     const EXCHANGE: &'static str = "";
///     const MESSAGE_TYPE: &'static str = "pricing.quote";
///     fn routing_key(&self) -> Cow<'_, str> { "pricing".into() }
/// }
///
/// let connector = Arc::new(Connector::new("amqp://guest:guest@127.0.0.1:5672/%2f", Backoff::default())?);
/// let client = RpcClient::new(connector, Json);
/// let price: u64 = client.call(&Quote { sku: "LAMP".into() }, Duration::from_secs(5)).await?;
/// # Ok(()) }
/// ```
pub struct RpcClient<C: Codec = Json> {
    connector: Arc<Connector>,
    session: tokio::sync::Mutex<Option<Session>>,
    codec: C,
}

impl<C: Codec> std::fmt::Debug for RpcClient<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient").finish_non_exhaustive()
    }
}

impl<C: Codec> RpcClient<C> {
    /// A client on `connector`, encoding with `codec`. Connects at the first call.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use postroom_client::{Backoff, Connector, Json, RpcClient};
    /// let connector = Arc::new(Connector::new("amqp://127.0.0.1:5672/%2f", Backoff::default()).unwrap());
    /// let client = RpcClient::new(connector, Json);
    /// # drop(client);
    /// ```
    pub fn new(connector: Arc<Connector>, codec: C) -> RpcClient<C> {
        RpcClient { connector, session: tokio::sync::Mutex::new(None), codec }
    }

    /// Sends `request` to its exchange and routing key and waits up to `timeout` for the
    /// reply.
    ///
    /// ```no_run
    /// # async fn run(client: postroom_client::RpcClient, request: impl postroom_client::Message) {
    /// use std::time::Duration;
    /// match client.call::<_, u64>(&request, Duration::from_secs(5)).await {
    ///     Ok(price) => println!("{price}"),
    ///     Err(postroom_client::Error::Timeout(_)) => println!("no responder"),
    ///     Err(error) => println!("{error}"),
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    /// - [`Error::Timeout`] when no reply came (no responder, or it is too slow);
    /// - [`Error::Remote`] when the responder answered with an error;
    /// - [`Error::Codec`] when the reply is not a `Resp`;
    /// - [`Error::Connect`] / [`Error::Amqp`] when the request could not be sent.
    pub async fn call<Req: Message, Resp: DeserializeOwned>(
        &self,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp> {
        let body = self.codec.encode(request)?;
        let mut envelope = Envelope::new().with_reply_to(DIRECT_REPLY_TO);
        envelope.correlation_id = Some(envelope.message_id.clone());
        envelope.message_type = Some(Req::MESSAGE_TYPE.to_string());
        envelope.content_type = Some(self.codec.content_type().to_string());
        let properties = envelope.to_properties()?;
        let exchange = short("exchange", Req::EXCHANGE)?;
        let routing_key = short("routing_key", &request.routing_key())?;
        let correlation_id = envelope.message_id.clone();

        let (sender, reply) = oneshot::channel();
        let (channel, waiting) = {
            let mut session = self.session.lock().await;
            if !session.as_ref().is_some_and(|session| session.channel.status().connected()) {
                *session = Some(self.open_session().await?);
            }
            let session = session.as_ref().ok_or(Error::Closed)?;
            (session.channel.clone(), Arc::clone(&session.waiting))
        };
        lock(&waiting).insert(correlation_id.clone(), sender);
        let sent = channel
            .basic_publish(exchange, routing_key, BasicPublishOptions::default(), &body, properties)
            .await;
        if let Err(source) = sent {
            lock(&waiting).remove(&correlation_id);
            return Err(Error::Amqp { operation: "basic.publish", source });
        }
        let answer = match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(answer)) => answer,
            // The reader stopped (channel lost) or the time ran out.
            Ok(Err(_)) | Err(_) => {
                lock(&waiting).remove(&correlation_id);
                return Err(Error::Timeout(timeout));
            }
        };
        if let Some(error) = answer.envelope.header_str(RPC_ERROR) {
            return Err(Error::Remote(error));
        }
        self.codec.decode(&answer.body)
    }

    async fn open_session(&self) -> Result<Session> {
        let channel = self.connector.channel().await?;
        let options = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
        let mut replies = channel
            .basic_consume(DIRECT_REPLY_TO.into(), "".into(), options, FieldTable::default())
            .await
            .map_err(Error::amqp("basic.consume"))?;
        let waiting: Waiting = Arc::default();
        let routes = Arc::clone(&waiting);
        let reader = tokio::spawn(async move {
            while let Some(Ok(delivery)) = replies.next().await {
                let (reply, _acker) = Incoming::from_delivery(delivery);
                let Some(id) = reply.envelope.correlation_id.clone() else { continue };
                // A reply nobody waits for (its call timed out) is dropped.
                if let Some(caller) = lock(&routes).remove(&id) {
                    let _ = caller.send(reply);
                }
            }
            // The channel is gone: fail every waiting call at once instead of at its timeout.
            lock(&routes).clear();
        });
        Ok(Session { channel, waiting, reader })
    }
}

fn lock(
    waiting: &Waiting,
) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Incoming>>> {
    // Held only for a map operation, never across an `.await`; a poisoned map is still valid.
    waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves requests: decodes `Req`, calls the function, publishes the `Ok` value (or the
/// `Err` text in the [`RPC_ERROR`] header) to the request's `reply_to` with its correlation
/// id. Run it in a [`Worker`](crate::Worker) on the request queue.
///
/// An undecodable request is answered with an error and dead-lettered; a request without
/// `reply_to` is dead-lettered; a reply that cannot be sent is retried.
///
/// ```no_run
/// # async fn run(publisher: std::sync::Arc<postroom_client::Publisher>) {
/// use postroom_client::Responder;
/// let responder = Responder::new(publisher, |sku: String| async move {
///     if sku.is_empty() { Err("no sku".to_string()) } else { Ok(sku.len() as u64 * 100) }
/// });
/// # drop(responder);
/// # }
/// ```
pub struct Responder<Req, F, C: Codec = Json> {
    publisher: Arc<Publisher<C>>,
    function: F,
    _request: PhantomData<fn() -> Req>,
}

impl<Req, F, C: Codec> std::fmt::Debug for Responder<Req, F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").finish_non_exhaustive()
    }
}

impl<Req, F, C: Codec> Responder<Req, F, C> {
    /// A responder replying through `publisher`.
    ///
    /// ```no_run
    /// # fn build(publisher: std::sync::Arc<postroom_client::Publisher>) {
    /// let echo = postroom_client::Responder::new(publisher, |text: String| async move { Ok::<_, String>(text) });
    /// # drop(echo);
    /// # }
    /// ```
    pub fn new<Fut>(publisher: Arc<Publisher<C>>, function: F) -> Responder<Req, F, C>
    where
        F: Fn(Req) -> Fut,
    {
        Responder { publisher, function, _request: PhantomData }
    }
}

impl<Req, Resp, F, Fut, C> Handler for Responder<Req, F, C>
where
    Req: DeserializeOwned + Send + 'static,
    Resp: serde::Serialize + Send,
    F: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<Resp, String>> + Send,
    C: Codec,
{
    async fn handle(&self, message: &Incoming) -> CommandResult {
        let Some(reply_to) = message.envelope.reply_to.clone() else {
            return CommandResult::dead_letter("request without reply_to");
        };
        let (body, error, result) = match self.publisher.codec().decode::<Req>(&message.body) {
            Err(error) => {
                let text = format!("invalid request: {error}");
                (Vec::new(), Some(text), CommandResult::invalid(error))
            }
            Ok(request) => match (self.function)(request).await {
                Ok(response) => match self.publisher.codec().encode(&response) {
                    Ok(body) => (body, None, CommandResult::Success),
                    Err(error) => (Vec::new(), Some(error.to_string()), CommandResult::Success),
                },
                Err(text) => (Vec::new(), Some(text), CommandResult::Success),
            },
        };
        let mut envelope = Envelope::caused_by(&message.envelope);
        envelope.correlation_id.clone_from(&message.envelope.correlation_id);
        if let Some(text) = error {
            let mut headers = FieldTable::default();
            headers.insert(RPC_ERROR.into(), AMQPValue::LongString(text.into()));
            envelope.headers = headers;
        }
        let options = PublishOptions { persistent: Some(false), ..PublishOptions::default() };
        match self.publisher.publish_raw("", &reply_to, &body, &envelope, &options).await {
            Ok(()) => result,
            Err(error) => {
                tracing::warn!(%error, "reply not sent; retrying the request");
                CommandResult::retry()
            }
        }
    }
}
