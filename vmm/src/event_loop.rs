//! The VMM's single event thread: an epoll loop dispatching ready file
//! descriptors (queue ioeventfds, sockets, the exit latch) to subscribers.
//! A subscriber changes its own set of fds through [`Ops`]; changes apply
//! after its handler returns, so handlers never see a half-updated table.

use std::os::fd::RawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Something that reacts to ready fds.
pub trait Subscriber {
    /// `fd` is ready with `events`.
    fn handle(&mut self, fd: RawFd, events: EventSet, ops: &mut Ops);
}

/// Pending fd changes of one subscriber.
#[derive(Default)]
pub struct Ops {
    add: Vec<(RawFd, EventSet)>,
    remove: Vec<RawFd>,
}

impl Ops {
    /// Watch `fd` for `events`.
    pub fn add(&mut self, fd: RawFd, events: EventSet) {
        self.add.push((fd, events));
    }

    /// Stop watching `fd` (before closing it).
    pub fn remove(&mut self, fd: RawFd) {
        self.remove.push(fd);
    }
}

/// Index of a subscriber in the loop.
pub type SubscriberId = usize;

/// The epoll loop.
pub struct EventLoop {
    epoll: Epoll,
    subscribers: Vec<Box<dyn Subscriber>>,
}

fn token(id: SubscriberId, fd: RawFd) -> u64 {
    ((id as u64) << 32) | u64::from(fd as u32)
}

impl EventLoop {
    /// An empty loop.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
            subscribers: Vec::new(),
        })
    }

    /// Adds a subscriber watching `fds`.
    pub fn subscribe(
        &mut self,
        sub: Box<dyn Subscriber>,
        fds: &[(RawFd, EventSet)],
    ) -> std::io::Result<SubscriberId> {
        let id = self.subscribers.len();
        self.subscribers.push(sub);
        let mut ops = Ops::default();
        for (fd, ev) in fds {
            ops.add(*fd, *ev);
        }
        self.apply(id, ops)?;
        Ok(id)
    }

    fn apply(&self, id: SubscriberId, ops: Ops) -> std::io::Result<()> {
        for fd in ops.remove {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                fd,
                EpollEvent::new(EventSet::empty(), 0),
            );
        }
        for (fd, ev) in ops.add {
            self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(ev, token(id, fd)),
            )?;
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: forever) and dispatches what is ready.
    pub fn run_once(&mut self, timeout_ms: i32) -> std::io::Result<usize> {
        let mut events = [EpollEvent::default(); 32];
        let n = match self.epoll.wait(timeout_ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        for ev in &events[..n] {
            let id = (ev.data() >> 32) as usize;
            let fd = ev.data() as u32 as RawFd;
            let mut ops = Ops::default();
            if let Some(sub) = self.subscribers.get_mut(id) {
                sub.handle(fd, ev.event_set(), &mut ops);
            }
            self.apply(id, ops)?;
        }
        Ok(n)
    }
}
