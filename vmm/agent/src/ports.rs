//! Port forwarding: one stream per TCP connection to a port on the
//! sandbox's loopback, bytes both ways under flow control, half-close
//! forwarded in both directions (`Eof` becomes `shutdown(SHUT_WR)` and the
//! reverse). The stream ends with `Done` when both directions are closed.
//!
//! The reverse direction (`Listen`): the agent listens on the sandbox's
//! loopback and relays each accepted connection on a stream it opens, so
//! sandbox processes reach a service on the host (the egress proxy, the
//! forge's git endpoint). Closing the listen stream closes the listener and
//! every connection it accepted.

use agent_proto::{Body, ErrorKind, RemoteError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::conn::{Op, finish};

async fn connect(port: u16) -> Result<TcpStream, RemoteError> {
    match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => Ok(s),
        Err(v4) => TcpStream::connect(("::1", port)).await.map_err(|_| {
            RemoteError::new(
                ErrorKind::from(&v4),
                format!("connect to port {port}: {v4}"),
            )
        }),
    }
}

pub async fn forward(op: Op, port: u16) -> Result<Body, RemoteError> {
    let tcp = connect(port).await?;
    op.sender().send(Body::Started { pid: 0 }).await?;
    relay(op, tcp, port).await
}

pub async fn listen(mut op: Op, port: u16) -> Result<Body, RemoteError> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
        RemoteError::new(ErrorKind::from(&e), format!("listen on port {port}: {e}"))
    })?;
    let port = listener
        .local_addr()
        .map_err(|e| RemoteError::new(ErrorKind::Io, e.to_string()))?
        .port();
    let out = op.sender();
    out.send(Body::Listening { port }).await?;
    // Dropped with this future: aborts every relay the listener started.
    let mut relays = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let conn = op.open_stream();
                out.send(Body::Accepted { stream: conn.id }).await?;
                relays.spawn(finish(conn, move |conn| relay(conn, tcp, port)));
            }
            body = op.input.recv() => match body {
                Some(Body::Cancel) | None => return Ok(Body::Done),
                Some(_) => {}
            },
            Some(_) = relays.join_next(), if !relays.is_empty() => {}
        }
    }
}

/// Copies both ways between a TCP connection and the operation's stream.
async fn relay(mut op: Op, tcp: TcpStream, port: u16) -> Result<Body, RemoteError> {
    let _ = tcp.set_nodelay(true);
    let out = op.sender();
    let (mut rd, mut wr) = tcp.into_split();

    let downstream = async {
        let mut buf = vec![0u8; agent_proto::CHUNK_BYTES];
        loop {
            let n = rd.read(&mut buf).await.map_err(|e| {
                RemoteError::new(ErrorKind::Io, format!("read from port {port}: {e}"))
            })?;
            if n == 0 {
                out.send(Body::Eof).await?;
                return Ok::<(), RemoteError>(());
            }
            out.send_data(&buf[..n], Body::Data).await?;
        }
    };
    let upstream = async {
        loop {
            match op.input.recv().await {
                Some(Body::Data(d)) => {
                    wr.write_all(&d).await.map_err(|e| {
                        RemoteError::new(ErrorKind::Io, format!("write to port {port}: {e}"))
                    })?;
                    out.credit(d.len()).await?;
                }
                Some(Body::Eof) => {
                    let _ = wr.shutdown().await;
                    return Ok::<(), RemoteError>(());
                }
                Some(Body::Cancel) | None => {
                    return Err(RemoteError::new(
                        ErrorKind::Io,
                        "connection reset by the client",
                    ));
                }
                Some(_) => {}
            }
        }
    };
    tokio::try_join!(downstream, upstream)?;
    Ok(Body::Done)
}
