//! A broker away for longer than the consumer group's session timeout
//! loses and doubles nothing, and the pipeline carries on by itself. With
//! static membership, librdkafka times the session out on its own side,
//! rejoins under the same `group.instance.id`, and may then be fenced by its
//! own new membership: a fatal consumer error (librdkafka issue #3437),
//! after which tactful starts its consumer again. Its own test binary, like
//! tests/broker_restart.rs: no other test sees the broker go away.

mod common;

#[test]
fn a_broker_away_longer_than_the_session_timeout_neither_loses_nor_doubles_anything() {
    // Down 12 s: longer than the 6 s session timeout of `stream::instance`.
    common::stream::assert_survives_a_broker_restart("broker-outage", 29, 3_000, 100_000, 12);
}
