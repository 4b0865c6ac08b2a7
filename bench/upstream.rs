//! The benchmark's upstream: the fastest HTTP/1.1 server that still behaves like an API.
//!
//! A current-thread hyper server that answers every request `200 OK` with a two-byte
//! body after reading (and dropping) the request body. `bench/run.sh` pins it to the
//! same CPU as the proxy under test, so one core serves both sides.
//!
//! ```text
//! bench-upstream serve [ADDR]     # default 127.0.0.1:0; prints `listening ADDR` once bound
//! bench-upstream forward UPSTREAM [ADDR]
//!     # the floor any hyper-based proxy stands on: a bare forwarder (hyper server +
//!     # hyper-util pooled client, one current-thread runtime, no policy, no audit)
//! bench-upstream free-port        # prints a port the OS just handed out (then closes it)
//! bench-upstream hold ADDR N SECS PATH TOKEN
//!     # opens N keep-alive connections to ADDR, sends one authenticated GET PATH on each,
//!     # reads the response head, prints `held N`, keeps them idle for SECS, exits
//! ```

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;

const BODY: &[u8] = b"ok";

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Drain the body so POSTs (parking replays, deny tests) look like they do upstream.
    let _ = req.into_body().collect().await;
    let mut r = Response::new(Full::new(Bytes::from_static(BODY)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    Ok(r)
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

/// The bare forwarder: every request goes to `upstream` unchanged but for its URI, on a
/// pooled keep-alive connection — what portcullis does minus everything it adds.
async fn forward(addr: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    use hyper_util::client::legacy::Client;
    let client: Client<_, Incoming> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let client = client.clone();
                async move {
                    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let uri: http::Uri = format!("http://{upstream}{pq}")
                        .parse()
                        .expect("a valid URI");
                    *req.uri_mut() = uri;
                    match client.request(req).await {
                        Ok(resp) => Ok::<_, Infallible>(resp.map(|b| b.boxed())),
                        Err(_) => {
                            let mut r = Response::new(
                                Full::new(Bytes::from_static(b"bad gateway"))
                                    .map_err(|never| match never {})
                                    .boxed(),
                            );
                            *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                            Ok(r)
                        }
                    }
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Opens `n` agent connections, makes one request on each and keeps them idle (for the
/// proxy's RSS with many idle keep-alive agents).
async fn hold(
    addr: SocketAddr,
    n: usize,
    secs: u64,
    path: &str,
    token: &str,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n");
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(req.as_bytes()).await?;
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let k = s.read(&mut buf).await?;
            if k == 0 {
                return Err(std::io::Error::other("the proxy closed a held connection"));
            }
            head.extend_from_slice(&buf[..k]);
        }
        if !head.starts_with(b"HTTP/1.1 200") {
            let line = String::from_utf8_lossy(&head);
            let line = line.lines().next().unwrap_or_default().to_string();
            return Err(std::io::Error::other(format!("unexpected answer: {line}")));
        }
        held.push(s);
    }
    println!("held {}", held.len());
    std::io::stdout().flush()?;
    tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
    drop(held);
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("free-port") => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            println!("{}", l.local_addr().expect("local addr").port());
        }
        Some("serve") | None => {
            let addr: SocketAddr = args
                .get(1)
                .map(|a| a.parse().expect("ADDR must be IP:PORT"))
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
            if let Err(e) = runtime().block_on(serve(addr)) {
                eprintln!("bench-upstream: {e}");
                std::process::exit(1);
            }
        }
        Some("forward") if args.len() >= 2 => {
            let upstream: SocketAddr = args[1].parse().expect("UPSTREAM must be IP:PORT");
            let addr: SocketAddr = args
                .get(2)
                .map(|a| a.parse().expect("ADDR must be IP:PORT"))
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
            if let Err(e) = runtime().block_on(forward(addr, upstream)) {
                eprintln!("bench-upstream forward: {e}");
                std::process::exit(1);
            }
        }
        Some("hold") if args.len() == 6 => {
            let addr: SocketAddr = args[1].parse().expect("ADDR must be IP:PORT");
            let n: usize = args[2].parse().expect("N");
            let secs: u64 = args[3].parse().expect("SECS");
            if let Err(e) = runtime().block_on(hold(addr, n, secs, &args[4], &args[5])) {
                eprintln!("bench-upstream hold: {e}");
                std::process::exit(1);
            }
        }
        Some(other) => {
            eprintln!(
                "usage: bench-upstream serve [ADDR] | forward UPSTREAM [ADDR] | free-port | hold ADDR N SECS PATH TOKEN (got `{other}`)"
            );
            std::process::exit(2);
        }
    }
}
