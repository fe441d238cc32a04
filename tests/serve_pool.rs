//! The serve_pool example end to end: a forked producer process fills the pool, the serving side
//! sends frames with sendfile, and real TCP clients verify every byte.

#[path = "../examples/serve_pool.rs"]
#[allow(dead_code)]
mod serve_pool;

#[test]
fn tcp_clients_get_every_frame_byte_for_byte() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || serve_pool::fetch_all(addr, 32).map_err(|e| e.to_string()))
        })
        .collect();
    let served = serve_pool::serve(listener, 32, 300_000, 2).unwrap();
    assert_eq!(served, 64);
    for c in clients {
        assert_eq!(c.join().unwrap().unwrap(), 32 * 300_000);
    }
}
