//! Services: named channels any participant creates, opens and discovers at runtime.
//!
//! ```
//! use fbuf::{Pool, PoolConfig};
//!
//! #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
//! #[repr(C)]
//! struct Frame { seq: u64, pixels: [u8; 1024] }
//!
//! let pool = PoolConfig::builder().name("doc-services").create()?;
//! let camera = pool.service("camera/left").publish_subscribe::<Frame>().subscriber_max(4).open_or_create()?;
//! let mut publisher = camera.publisher()?;
//! let mut viewer = camera.subscriber()?;   // usually in another process
//!
//! let mut frame = publisher.loan()?;        // a pool slot, written in place
//! frame.seq = 7;
//! frame.pixels = [1; 1024];
//! assert_eq!(publisher.send(frame)?, 1);    // one subscriber reached; only 16 bytes moved
//!
//! let got = viewer.recv()?;                 // dereferences to &Frame, read in place
//! assert_eq!((got.seq, got.pixels[0]), (7, 1));
//! assert_eq!(pool.services()[0].name, "camera/left");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Kinds: [`Stream`] (one sender, one receiver), [`ManyToOne`], [`PublishSubscribe`] (every
//! sample to every subscriber; backpressure, or loss counted per lossy subscriber; optional
//! history for late joiners), [`RequestResponse`] (many clients, one server, replies matched to
//! requests) and [`Event`] (notification bits; an eventfd for epoll or tokio).
//!
//! A service lives in the pool's directory (`directory`) while some process holds a [`Service`]
//! handle or an endpoint of it, and its rings return to the pool when the last one goes, or
//! when the last user dies and is reaped. Limits (services, rings, ring capacity) are the pool's
//! configuration ([`crate::PoolBuilder`]).

mod directory;
mod endpoints;
mod error;
mod event;
mod record_sender;
mod rpc;
mod sample;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

pub use crate::channel::{Notifier as ReadyFd, RingStats, WaitStrategy};
pub(crate) use directory::{Directory, SERVICE_UNIT};
pub use directory::{Kind, MAX_NAME};
pub use endpoints::{Publisher, Receiver, Sender, Subscriber};
pub use error::{
    EndpointError, Fault, LoanError, PublishTimeoutError, RecvError, RecvTimeoutError, SendError,
    SendTimeoutError, ServiceError, TryPublishError, TryRecvError, TrySendError,
};
pub use event::{Events, Listener, Notifier, WaitError};
pub use record_sender::{RecordSendError, RecordSender};
pub use rpc::{CallError, Client, RefuseError, Request, Response, Server};
pub use sample::{Message, Sample, SampleMut};

use crate::channel;
use crate::layout::UnitLayout;
use crate::pool::Pool;
use directory::{DirError, Entry, Spec};
use sample::Carries;

/// One-to-one: one [`Sender`], one [`Receiver`].
pub struct Stream<T: ?Sized>(PhantomData<fn() -> Box<T>>);
/// Many [`Sender`]s, one [`Receiver`].
pub struct ManyToOne<T: ?Sized>(PhantomData<fn() -> Box<T>>);
/// One [`Publisher`], many [`Subscriber`]s.
pub struct PublishSubscribe<T: ?Sized>(PhantomData<fn() -> Box<T>>);
/// Many [`Client`]s, one [`Server`].
pub struct RequestResponse<Req: ?Sized, Resp: ?Sized>(PhantomData<(Carries<Req>, Carries<Resp>)>);
/// [`Notifier`]s and [`Listener`]s of event bits.
#[derive(Debug)]
pub struct Event;

/// A service kind, as a type.
pub trait ServiceKind {
    #[doc(hidden)]
    const KIND: Kind;
    /// Payload size and alignment (0 size: byte slices), and the reply's size.
    #[doc(hidden)]
    fn payload() -> (Option<usize>, usize, Option<usize>);
}

impl<T: Message + ?Sized> ServiceKind for Stream<T> {
    const KIND: Kind = Kind::Stream;
    fn payload() -> (Option<usize>, usize, Option<usize>) {
        (T::fixed_size(), T::align(), None)
    }
}

impl<T: Message + ?Sized> ServiceKind for ManyToOne<T> {
    const KIND: Kind = Kind::ManyToOne;
    fn payload() -> (Option<usize>, usize, Option<usize>) {
        (T::fixed_size(), T::align(), None)
    }
}

impl<T: Message + ?Sized> ServiceKind for PublishSubscribe<T> {
    const KIND: Kind = Kind::PublishSubscribe;
    fn payload() -> (Option<usize>, usize, Option<usize>) {
        (T::fixed_size(), T::align(), None)
    }
}

impl<Req: Message + ?Sized, Resp: Message + ?Sized> ServiceKind for RequestResponse<Req, Resp> {
    const KIND: Kind = Kind::RequestResponse;
    fn payload() -> (Option<usize>, usize, Option<usize>) {
        (
            Req::fixed_size(),
            Req::align().max(Resp::align()),
            Resp::fixed_size(),
        )
    }
}

impl ServiceKind for Event {
    const KIND: Kind = Kind::Event;
    fn payload() -> (Option<usize>, usize, Option<usize>) {
        (Some(0), 1, None)
    }
}

/// Names a service; choose its kind next.
#[derive(Debug)]
pub struct ServiceBuilder<'p> {
    pool: &'p Pool,
    name: String,
}

/// A service's settings, before it is opened or created.
pub struct ServiceConfig<'p, K> {
    pool: &'p Pool,
    name: String,
    capacity: u32,
    rings: u32,
    history: u32,
    /// A payload size and alignment that byte endpoints declare for a typed service (a bridge
    /// carrying `Frame`s as bytes), instead of "bytes of any length".
    layout: Option<(u32, u32)>,
    _k: PhantomData<K>,
}

impl Pool {
    /// Starts opening or creating the service called `name` (1 to 64 bytes of UTF-8, no
    /// control characters; `/` is customary for hierarchy).
    pub fn service(&self, name: &str) -> ServiceBuilder<'_> {
        ServiceBuilder {
            pool: self,
            name: name.to_owned(),
        }
    }

    /// The services alive in this pool now, read from the directory without changing it.
    pub fn services(&self) -> Vec<ServiceInfo> {
        let dir = Directory::new(self);
        dir.list()
            .into_iter()
            .map(|e| {
                let rings: Vec<UnitLayout> =
                    (0..e.spec.rings).filter_map(|k| dir.unit(&e, k)).collect();
                let units = channel::unit_stats(self, &rings);
                ServiceInfo {
                    users: dir.users(e.index, e.generation),
                    name: e.name,
                    kind: e.spec.kind,
                    capacity: e.spec.capacity as usize,
                    payload_size: e.spec.size as usize,
                    rings: units,
                }
            })
            .collect()
    }
}

/// What discovery tells of one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: String,
    pub kind: Kind,
    /// Descriptors each ring holds.
    pub capacity: usize,
    /// Bytes of the payload type (0: byte slices).
    pub payload_size: usize,
    /// Processes that hold the service open.
    pub users: usize,
    /// Each ring: queued descriptors, receiver and senders.
    pub rings: Vec<RingStats>,
}

impl<'p> ServiceBuilder<'p> {
    fn config<K>(self, rings: u32) -> ServiceConfig<'p, K> {
        ServiceConfig {
            pool: self.pool,
            name: self.name,
            capacity: self
                .pool
                .shared()
                .layout()
                .services
                .limits
                .ring_capacity
                .min(256),
            rings,
            history: 0,
            layout: None,
            _k: PhantomData,
        }
    }

    /// One sender, one receiver, in order.
    pub fn stream<T: Message + ?Sized>(self) -> ServiceConfig<'p, Stream<T>> {
        self.config(1)
    }

    /// Many senders, one receiver.
    pub fn many_to_one<T: Message + ?Sized>(self) -> ServiceConfig<'p, ManyToOne<T>> {
        self.config(1)
    }

    /// One publisher, up to `subscriber_max` subscribers (default 4).
    pub fn publish_subscribe<T: Message + ?Sized>(self) -> ServiceConfig<'p, PublishSubscribe<T>> {
        self.config(4)
    }

    /// Many clients (up to `client_max`, default 4), one server.
    pub fn request_response<Req: Message + ?Sized, Resp: Message + ?Sized>(
        self,
    ) -> ServiceConfig<'p, RequestResponse<Req, Resp>> {
        self.config(5)
    }

    /// Notification bits, to up to `listener_max` listeners (default 4).
    pub fn event(self) -> ServiceConfig<'p, Event> {
        self.config(4)
    }
}

impl<K> ServiceConfig<'_, K> {
    /// Descriptors each ring holds (a power of two, at most the pool's ring capacity).
    pub fn capacity(mut self, n: u32) -> Self {
        self.capacity = n;
        self
    }
}

impl ServiceConfig<'_, PublishSubscribe<[u8]>> {
    /// Opens or creates the service as one of `size`-byte payloads aligned to `align`, with
    /// byte endpoints: for programs that carry another program's typed samples as bytes (the
    /// Zenoh bridge), so that typed endpoints of both can meet on one service. Sizes are still
    /// checked: a sample of another length is refused by name, and a size larger than the
    /// pool's largest slot is refused when the service is opened or created.
    pub fn payload_layout(mut self, size: u32, align: u32) -> Self {
        self.layout = Some((size, align));
        self
    }
}

impl<T: ?Sized> ServiceConfig<'_, PublishSubscribe<T>> {
    /// Most subscribers at once (one ring each).
    pub fn subscriber_max(mut self, n: u32) -> Self {
        self.rings = n;
        self
    }

    /// Samples kept and replayed to a subscriber that joins later: at most the capacity, which
    /// is all a late subscriber's ring takes.
    pub fn history(mut self, n: u32) -> Self {
        self.history = n;
        self
    }
}

impl<Req: ?Sized, Resp: ?Sized> ServiceConfig<'_, RequestResponse<Req, Resp>> {
    /// Most clients at once (one reply ring each).
    pub fn client_max(mut self, n: u32) -> Self {
        self.rings = n.saturating_add(1);
        self
    }
}

impl ServiceConfig<'_, Event> {
    /// Most listeners at once.
    pub fn listener_max(mut self, n: u32) -> Self {
        self.rings = n;
        self
    }
}

fn dir_error(e: DirError, services: u32) -> ServiceError {
    match e {
        DirError::Busy => ServiceError::DirectoryBusy,
        DirError::Full => ServiceError::DirectoryFull(services),
        DirError::NoRings { needed } => ServiceError::NoRings { needed },
        DirError::NoRefSlot => ServiceError::TooManyOpen,
    }
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len()) && !name.chars().any(char::is_control)
}

impl<K: ServiceKind> ServiceConfig<'_, K> {
    fn spec(&self) -> Result<Spec, ServiceError> {
        let (size, align, reply) = K::payload();
        if align > 64 {
            return Err(ServiceError::OverAligned(align));
        }
        let limit = self.pool.shared().layout().services.limits.ring_capacity;
        if !self.capacity.is_power_of_two() || self.capacity > limit {
            return Err(ServiceError::BadConfig {
                what: "capacity",
                rule: "a power of two up to the pool's ring capacity",
                value: self.capacity.into(),
            });
        }
        let min_rings = if K::KIND == Kind::RequestResponse {
            2
        } else {
            1
        };
        if self.rings < min_rings {
            return Err(ServiceError::BadConfig {
                what: "the subscriber, client or listener maximum",
                rule: "at least 1",
                value: self.rings.saturating_sub(min_rings - 1).into(),
            });
        }
        if self.history > self.capacity {
            // A late subscriber's ring takes at most `capacity` of them; the rest would be slots
            // held for nothing.
            return Err(ServiceError::BadConfig {
                what: "history",
                rule: "at most the capacity",
                value: self.history.into(),
            });
        }
        let size32 = |s: Option<usize>| s.map_or(0, |s| s.min(u32::MAX as usize) as u32);
        let (size, align) = match self.layout {
            Some((size, align)) if align.is_power_of_two() && align <= 64 => (size, align),
            Some((_, align)) => return Err(ServiceError::OverAligned(align as usize)),
            None => (size32(size), align as u32),
        };
        // A payload no slot holds would make every loan fail: say so when the service is named.
        let largest = self.pool.shared().layout().largest_slot();
        for payload in [size, size32(reply)] {
            if payload as usize > largest {
                return Err(ServiceError::BadConfig {
                    what: "payload size",
                    rule: "at most the pool's largest slot",
                    value: payload.into(),
                });
            }
        }
        Ok(Spec {
            kind: K::KIND,
            capacity: self.capacity,
            rings: self.rings,
            size,
            reply_size: size32(reply),
            align,
            history: self.history,
        })
    }

    /// Opens the service if it exists, with a compatible shape; creates it otherwise.
    pub fn open_or_create(self) -> Result<Service<K>, ServiceError> {
        self.open_with(true, true)
    }

    /// Opens the existing service.
    pub fn open(self) -> Result<Service<K>, ServiceError> {
        self.open_with(true, false)
    }

    /// Creates the service; an error if it exists.
    pub fn create(self) -> Result<Service<K>, ServiceError> {
        self.open_with(false, true)
    }

    fn open_with(self, open: bool, create: bool) -> Result<Service<K>, ServiceError> {
        if !valid_name(&self.name) {
            return Err(ServiceError::BadName(crate::pool::shown(&self.name)));
        }
        let spec = self.spec()?;
        let dir = Directory::new(self.pool);
        let services = dir.layout().limits.services;
        let locked = dir.lock().map_err(|e| dir_error(e, services))?;
        let entry = match locked.find(&self.name) {
            Some(e) if open => {
                compatible(&self.name, &e.spec, &spec)?;
                e
            }
            Some(_) => return Err(ServiceError::AlreadyExists(self.name)),
            None if create => locked
                .create(&self.name, &spec)
                .map_err(|e| dir_error(e, services))?,
            None => {
                return Err(ServiceError::NotFound(self.name));
            }
        };
        let ref_slot = locked.add_ref(&entry).map_err(|e| {
            // A service we just created and cannot hold must not stay behind unused.
            locked.drop_ref(entry.index, entry.generation, usize::MAX);
            dir_error(e, services)
        })?;
        drop(locked);
        Ok(Service {
            handle: Arc::new(Handle {
                pool: self.pool.clone(),
                entry,
                ref_slot,
            }),
            _k: PhantomData,
        })
    }
}

/// Whether an existing service fits what an opener asked for.
fn compatible(name: &str, found: &Spec, asked: &Spec) -> Result<(), ServiceError> {
    if found.kind != asked.kind {
        return Err(ServiceError::WrongKind {
            name: name.into(),
            expected: asked.kind.name(),
            found: found.kind.name(),
        });
    }
    if (found.size, found.reply_size, found.align) != (asked.size, asked.reply_size, asked.align) {
        return Err(ServiceError::WrongPayload {
            name: name.into(),
            expected: asked.size,
            found: found.size,
            expected_align: asked.align,
            found_align: found.align,
        });
    }
    Ok(())
}

/// This process's hold on a service: while any `Service` or endpoint of it lives here, the
/// service stays in the directory.
pub(crate) struct Handle {
    pub(crate) pool: Pool,
    pub(crate) entry: Entry,
    ref_slot: usize,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let dir = Directory::new(&self.pool);
        // If the directory stays locked (a stuck peer), the reference stays until this process
        // is reaped; the service is then collected.
        if let Ok(locked) = dir.lock() {
            locked.drop_ref(self.entry.index, self.entry.generation, self.ref_slot);
        }
    }
}

impl Handle {
    fn units(&self) -> Vec<(UnitLayout, u32)> {
        let dir = Directory::new(&self.pool);
        (0..self.entry.spec.rings)
            .filter_map(|k| {
                dir.unit(&self.entry, k)
                    .map(|u| (u, SERVICE_UNIT + self.entry.first_unit + k))
            })
            .collect()
    }

    fn label(&self) -> usize {
        self.entry.index as usize
    }
}

/// An open service: make endpoints from it. Cheap to clone.
pub struct Service<K> {
    handle: Arc<Handle>,
    _k: PhantomData<K>,
}

impl<K> Clone for Service<K> {
    fn clone(&self) -> Self {
        Service {
            handle: self.handle.clone(),
            _k: PhantomData,
        }
    }
}

impl<K> fmt::Debug for Service<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.handle.entry.name)
            .field("kind", &self.handle.entry.spec.kind)
            .field("capacity", &self.handle.entry.spec.capacity)
            .field("rings", &self.handle.entry.spec.rings)
            .finish()
    }
}

impl<K> Service<K> {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.handle.entry.name
    }

    /// Descriptors each of its rings holds.
    pub fn capacity(&self) -> usize {
        self.handle.entry.spec.capacity as usize
    }

    fn err(&self, what: &'static str) -> impl Fn(channel::OpenError) -> EndpointError + '_ {
        move |e| EndpointError::from_open(e, self.name(), what)
    }
}

impl<K: PointToPoint> Service<K> {
    /// A sender (a stream has one at a time).
    pub fn sender(&self) -> Result<Sender<K::Payload>, EndpointError> {
        let (u, id) = self.handle.units()[0];
        let inner = channel::Sender::open(&self.handle.pool, u, id, self.handle.label())
            .map_err(self.err("sender"))?;
        Ok(Sender {
            inner,
            scratch: Vec::new(),
            service: self.handle.clone(),
            _t: PhantomData,
        })
    }

    /// The receiver (one at a time).
    pub fn receiver(&self) -> Result<Receiver<K::Payload>, EndpointError> {
        let (u, id) = self.handle.units()[0];
        let inner = channel::Receiver::open(&self.handle.pool, u, id, self.handle.label())
            .map_err(self.err("receiver"))?;
        Ok(Receiver {
            inner,
            scratch: Vec::new(),
            service: self.handle.clone(),
            _t: PhantomData,
        })
    }
}

/// Stream and many-to-one services: [`Service::sender`] and [`Service::receiver`].
pub trait PointToPoint {
    type Payload: Message + ?Sized;
}

impl<T: Message + ?Sized> PointToPoint for Stream<T> {
    type Payload = T;
}

impl<T: Message + ?Sized> PointToPoint for ManyToOne<T> {
    type Payload = T;
}

impl<T: Message + ?Sized> Service<PublishSubscribe<T>> {
    /// The publisher.
    pub fn publisher(&self) -> Result<Publisher<T>, EndpointError> {
        let units = self.handle.units();
        let n = units.len();
        let inner = channel::Publisher::open(&self.handle.pool, units, self.handle.label())
            .map_err(self.err("publisher"))?;
        Ok(Publisher {
            inner,
            service: self.handle.clone(),
            history: Default::default(),
            seen: vec![0; n],
            _t: PhantomData,
        })
    }

    /// A subscriber that holds the publisher back when it falls behind.
    pub fn subscriber(&self) -> Result<Subscriber<T>, EndpointError> {
        self.subscribe(false)
    }

    /// A subscriber that loses its oldest samples when it falls behind, and is told how many
    /// ([`Subscriber::take_lost`]).
    pub fn lossy_subscriber(&self) -> Result<Subscriber<T>, EndpointError> {
        self.subscribe(true)
    }

    fn subscribe(&self, lossy: bool) -> Result<Subscriber<T>, EndpointError> {
        let inner = channel::Subscriber::open(
            &self.handle.pool,
            &self.handle.units(),
            lossy,
            self.handle.label(),
        )
        .map_err(self.err("subscriber"))?;
        Ok(Subscriber {
            inner,
            service: self.handle.clone(),
            _t: PhantomData,
        })
    }
}

impl<Req: Message + ?Sized, Resp: Message + ?Sized> Service<RequestResponse<Req, Resp>> {
    /// The server (one at a time).
    pub fn server(&self) -> Result<Server<Req, Resp>, EndpointError> {
        let units = self.handle.units();
        let (pool, label) = (&self.handle.pool, self.handle.label());
        let mut requests = channel::Receiver::open(pool, units[0].0, units[0].1, label)
            .map_err(self.err("server"))?;
        // Clients come and go; the server waits for the next one.
        requests.set_persistent();
        let replies = channel::Publisher::open(pool, units[1..].to_vec(), label)
            .map_err(self.err("server"))?;
        Ok(Server {
            requests,
            replies,
            service: self.handle.clone(),
            _t: PhantomData,
        })
    }

    /// A client (up to `client_max` at once).
    pub fn client(&self) -> Result<Client<Req, Resp>, EndpointError> {
        let units = self.handle.units();
        let (pool, label) = (&self.handle.pool, self.handle.label());
        let (replies, k) = channel::Subscriber::open_where(pool, &units[1..], false, label)
            .map_err(self.err("client"))?;
        let requests = channel::Sender::open(pool, units[0].0, units[0].1, label)
            .map_err(self.err("client"))?;
        Ok(Client {
            requests,
            replies,
            id: k as u32,
            next_seq: 1,
            unmatched: 0,
            service: self.handle.clone(),
            _t: PhantomData,
        })
    }
}

impl Service<Event> {
    /// A notifier (any number).
    pub fn notifier(&self) -> Notifier {
        let units = self.handle.units().into_iter().map(|(u, _)| u).collect();
        Notifier::new(
            channel::event::EventNotifier::open(&self.handle.pool, units),
            self.handle.clone(),
        )
    }

    /// A listener (up to `listener_max` at once).
    pub fn listener(&self) -> Result<Listener, EndpointError> {
        let units: Vec<UnitLayout> = self.handle.units().into_iter().map(|(u, _)| u).collect();
        channel::event::EventListener::open(&self.handle.pool, &units)
            .map(|inner| Listener::new(inner, self.handle.clone()))
            .ok_or_else(|| EndpointError::Full(self.name().into(), "listener"))
    }
}

impl<K> std::fmt::Debug for ServiceConfig<'_, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .field("rings", &self.rings)
            .finish_non_exhaustive()
    }
}

macro_rules! kind_debug {
    ($($ty:ident),*) => {$(
        impl<T: ?Sized> fmt::Debug for $ty<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}<{}>", stringify!($ty), std::any::type_name::<T>())
            }
        }
    )*};
}

kind_debug!(Stream, ManyToOne, PublishSubscribe);

impl<Req: ?Sized, Resp: ?Sized> fmt::Debug for RequestResponse<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RequestResponse<{}, {}>",
            std::any::type_name::<Req>(),
            std::any::type_name::<Resp>()
        )
    }
}
