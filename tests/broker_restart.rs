//! A broker restart mid-stream loses and doubles nothing. Its own test
//! binary: cargo runs test binaries one at a time, so no other test sees the
//! broker go away. It restarts the broker of scripts/kafka.sh, started by
//! scripts/test.sh or by the harness (`scripts/kafka.sh restart`: same data,
//! same port).

mod common;

#[test]
fn a_broker_restart_mid_stream_neither_loses_nor_doubles_anything() {
    common::stream::assert_survives_a_broker_restart("broker-restart", 23, 4_000, 150_000, 0);
}
