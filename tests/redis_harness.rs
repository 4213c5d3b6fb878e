//! The Redis harness itself (tests/common/redis.rs): a server starts on an ephemeral loopback
//! port and answers, a password is enforced, a killed server restarts on the same port without
//! its keys, and a three-master cluster covers every slot, with the Rust hash slot agreeing
//! with the cluster's own `CLUSTER KEYSLOT`.

mod common;

use common::redis::{crc16_xmodem, hash_slot, SLOTS};
use common::*;
use std::collections::HashSet;
use std::process::Command;

#[test]
fn server_starts_on_loopback_and_answers_ping() {
    let mut redis = RedisServer::start();
    assert!(redis.is_running());
    assert_eq!(redis.cli(&["PING"]), "PONG");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert_eq!(redis.cli(&["CONFIG", "GET", "bind"]), "bind\n127.0.0.1");
    assert_eq!(redis.cli(&["SET", "k", "v"]), "OK");
    assert_eq!(redis.cli(&["GET", "k"]), "v");
    let err = redis.try_cli(&["NO-SUCH-COMMAND"]).unwrap_err();
    assert!(err.contains("unknown command"), "{err}");
}

/// Usable from an async test (the calls block briefly; that is fine).
#[tokio::test]
async fn servers_in_an_async_test_get_distinct_ports() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), b.port());
    assert_eq!(a.cli(&["PING"]), "PONG");
    assert_eq!(b.cli(&["PING"]), "PONG");
}

#[test]
fn password_is_required() {
    let redis = RedisServer::start_with_password("s3cret");
    assert_eq!(redis.cli(&["PING"]), "PONG");
    assert_eq!(
        redis.url(),
        format!("redis://:s3cret@127.0.0.1:{}", redis.port())
    );
    // Without the password: NOAUTH.
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "PING"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("NOAUTH"), "{said}");
}

#[test]
fn killed_server_refuses_then_restarts_on_the_same_port_without_keys() {
    let mut redis = RedisServer::start_with_password("pw");
    let port = redis.port();
    redis.cli(&["SET", "tenant:acme", "7"]);
    assert_eq!(redis.cli(&["GET", "tenant:acme"]), "7");

    redis.kill();
    assert!(!redis.is_running());
    let err = redis.try_cli(&["PING"]).unwrap_err();
    assert!(err.contains("Connection refused"), "{err}");

    redis.restart();
    assert!(redis.is_running());
    assert_eq!(redis.port(), port);
    assert_eq!(redis.cli(&["PING"]), "PONG");
    assert_eq!(redis.cli(&["EXISTS", "tenant:acme"]), "0");
    assert_eq!(redis.cli(&["DBSIZE"]), "0");
}

#[test]
fn hash_slot_follows_the_cluster_spec() {
    // The CRC16 check value, and examples from the Redis Cluster specification.
    assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
    assert_eq!(hash_slot("foo"), 12182);
    assert_eq!(hash_slot("{user1000}.following"), hash_slot("user1000"));
    assert_eq!(hash_slot("{user1000}.followers"), hash_slot("user1000"));
    assert_eq!(hash_slot("foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % SLOTS);
    assert_eq!(hash_slot("foo{{bar}}zap"), hash_slot("{bar"));
    assert_eq!(hash_slot("foo{bar}{zap}"), hash_slot("bar"));
    assert_eq!(
        hash_slot("no-close{tag"),
        crc16_xmodem(b"no-close{tag") % SLOTS
    );
}

#[test]
fn cluster_of_three_masters_covers_every_slot() {
    let cluster = RedisCluster::start();
    let ports = cluster.ports();
    assert_eq!(ports.len(), 3);
    assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 3);
    assert_eq!(
        cluster.seeds(),
        ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
    );
    for &port in &ports {
        let info = cluster.cli(port, &["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        assert!(info.contains("cluster_size:3"), "{info}");
    }

    // Every slot has a master, and each of the three serves some.
    let mut serving = HashSet::new();
    for slot in (0..SLOTS).step_by(97).chain([0, SLOTS - 1]) {
        let port = cluster.master_for_slot(slot);
        assert!(ports.contains(&port), "slot {slot} on unknown port {port}");
        serving.insert(port);
    }
    assert_eq!(serving.len(), 3, "{serving:?}");

    // The Rust hash slot agrees with the cluster's.
    for key in [
        "foo",
        "tenant:acme",
        "{acme}:tokens",
        "a{}b",
        "rl:{globex}:day",
        "",
    ] {
        assert_eq!(hash_slot(key), cluster.slot_of(key), "key {key:?}");
    }

    // One key per master, each stored on (and only readable from) its own master.
    let tags = cluster.tag_on_each_master("tenant-");
    assert_eq!(tags.len(), 3);
    for (tag, &port) in tags.iter().zip(&ports) {
        assert!(tag.starts_with("tenant-"), "{tag}");
        assert_eq!(cluster.master_for_slot(cluster.slot_of(tag)), port, "{tag}");
        assert_eq!(cluster.cli(port, &["SET", tag, "1"]), "OK");
        assert_eq!(cluster.cli(port, &["GET", tag]), "1");
        let other = *ports.iter().find(|&&p| p != port).unwrap();
        let moved = Command::new("redis-cli")
            .args(["-p", &other.to_string(), "GET", tag])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&moved.stdout);
        let to = format!("MOVED {} 127.0.0.1:{port}", hash_slot(tag));
        assert!(said.contains(&to), "{said}");
    }
}

/// A restart that finds its port taken fails loudly, naming the port (with the server log).
#[test]
#[should_panic(expected = "was taken meanwhile")]
fn restart_on_a_taken_port_panics_with_the_reason() {
    let mut redis = RedisServer::start();
    redis.kill();
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", redis.port())).unwrap();
    redis.restart();
}
