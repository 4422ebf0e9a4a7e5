//! An HTTP relay in front of moto's KMS that holds one Decrypt call back
//! until the test lets it go: a test can then see what credsync does while
//! an item is still with KMS. Plain HTTP/1.1 on loopback, one thread per
//! connection; it stops when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a held call waits for [`KmsHold::release`] at most, so a
/// failing test never hangs.
const HOLD_AT_MOST: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Gate {
    /// The held call has arrived.
    holding: bool,
    released: bool,
}

pub struct KmsHold {
    pub url: String,
    port: u16,
    gate: Arc<(Mutex<Gate>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KmsHold {
    /// Relays to `upstream` (`http://127.0.0.1:PORT`), holding the
    /// `nth` Decrypt call (1-based).
    pub fn start(upstream: &str, nth: usize) -> Self {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("a plain http upstream")
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let gate: Arc<(Mutex<Gate>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let decrypts = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (gate, stop) = (gate.clone(), stop.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let (gate, decrypts, upstream) =
                        (gate.clone(), decrypts.clone(), upstream.clone());
                    std::thread::spawn(move || {
                        let _ = relay(client, &upstream, nth, &decrypts, &gate);
                    });
                }
            })
        };
        Self {
            url: format!("http://127.0.0.1:{port}"),
            port,
            gate,
            stop,
            thread: Some(thread),
        }
    }

    /// Whether the held call has arrived (and waits).
    pub fn holding(&self) -> bool {
        self.gate.0.lock().unwrap().holding
    }

    /// Lets the held call (and any later one) through.
    pub fn release(&self) {
        let (lock, wake) = &*self.gate;
        lock.lock().unwrap().released = true;
        wake.notify_all();
    }
}

impl Drop for KmsHold {
    fn drop(&mut self) {
        self.release();
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Relays requests on one connection until the client closes it; each
/// request goes upstream on a connection of its own.
fn relay(
    client: TcpStream,
    upstream: &str,
    nth: usize,
    decrypts: &AtomicUsize,
    gate: &(Mutex<Gate>, Condvar),
) -> std::io::Result<()> {
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    while let Some((head, body)) = read_message(&mut from_client)? {
        let decrypt = head
            .lines()
            .any(|l| l.eq_ignore_ascii_case("x-amz-target: trentservice.decrypt"));
        if decrypt && decrypts.fetch_add(1, Ordering::SeqCst) + 1 == nth {
            let (lock, wake) = gate;
            let mut state = lock.lock().unwrap();
            state.holding = true;
            let _ = wake
                .wait_timeout_while(state, HOLD_AT_MOST, |s| !s.released)
                .unwrap();
        }
        let mut to_server = TcpStream::connect(upstream)?;
        to_server.write_all(head.as_bytes())?;
        to_server.write_all(&body)?;
        let mut from_server = BufReader::new(to_server.try_clone()?);
        let Some((head, body)) = read_message(&mut from_server)? else {
            break;
        };
        to_client.write_all(head.as_bytes())?;
        to_client.write_all(&body)?;
        let _ = to_server.shutdown(Shutdown::Both);
    }
    let _ = to_client.shutdown(Shutdown::Both);
    Ok(())
}

/// One request or response: its head (through the blank line) and its
/// Content-Length body; None once the peer closed the connection.
fn read_message(from: &mut BufReader<TcpStream>) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if from.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "the KMS relay handles Content-Length bodies only:\n{head}"
    );
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.trim().parse::<usize>().unwrap())
        .unwrap_or(0);
    let mut body = vec![0; length];
    from.read_exact(&mut body)?;
    Ok(Some((head, body)))
}
