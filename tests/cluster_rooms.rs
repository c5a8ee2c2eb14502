//! Chat room memberships (spec §C6) against both backends: add / remove / status / rooms,
//! one current room per connection per node, the per-node room index, the §C10.9 race
//! (concurrent adds of one id from many tasks and nodes give one member and one `Added`) and
//! §C6.6 (a shared web id stays while another node holds it); on redis also the purge of a
//! killed or leaving node's members (§C10.9, §C2.7) through the peers layer.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "common/cluster_harness.rs"]
mod harness;
#[path = "common/redis_server.rs"]
mod redis_server;

use actioncluster::{Cluster, ClusterError, ClusterSettings, PeerEvent, RoomAdd, TaskSettings};
use harness::{Harness, Kind, WAIT, both_backends};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;

both_backends!(
    add_remove_and_status,
    rooms_lists_the_rooms_with_members,
    one_current_room_per_connection_per_node,
    room_index_records_this_nodes_memberships,
    race_concurrent_adds_of_one_id_give_one_member,
    shared_web_id_stays_while_another_node_holds_it,
    bad_names_are_refused,
);

async fn members(c: &Cluster, room: &str) -> Vec<String> {
    c.rooms().status(room).await.unwrap().members
}

/// On redis, lists `ids` in `actionHero:peers` (the peers layout of §C2.1), so the remove
/// script counts their room indexes as holders. The memory backend counts every sibling.
async fn list_peers(h: &Harness, ids: &[&str]) {
    if let Some(mut raw) = h.raw().await {
        for id in ids {
            let _: i64 = redis::cmd("RPUSH").arg("actionHero:peers").arg(id).query_async(&mut raw).await.unwrap();
        }
    }
}

async fn add_remove_and_status(kind: Kind) {
    let h = Harness::new(kind).await;
    let rooms = h.cluster.rooms();
    let empty = rooms.status("lobby").await.unwrap();
    assert_eq!(serde_json::to_value(&empty).unwrap(), json!({"room": "lobby", "members": [], "membersCount": 0}));

    assert_eq!(rooms.add("lobby", "c1").await.unwrap(), RoomAdd::Added);
    let again = rooms.add("lobby", "c1").await.unwrap();
    assert_eq!(again, RoomAdd::AlreadyMember);
    assert_eq!(again.to_string(), "Connection already in this room");
    assert_eq!(rooms.add("lobby", "c2").await.unwrap(), RoomAdd::Added);
    let status = rooms.status("lobby").await.unwrap();
    assert_eq!(
        serde_json::to_value(&status).unwrap(),
        json!({"room": "lobby", "members": ["c1", "c2"], "membersCount": 2})
    );

    assert!(rooms.remove("lobby", "c1").await.unwrap(), "the list changed");
    assert!(!rooms.remove("lobby", "c1").await.unwrap(), "nothing left to remove");
    assert!(!rooms.remove("elsewhere", "c2").await.unwrap(), "not a member there");
    assert_eq!(members(&h.cluster, "lobby").await, ["c2"]);
    assert!(rooms.remove("lobby", "c2").await.unwrap());
    let status = rooms.status("lobby").await.unwrap();
    assert_eq!((status.members.len(), status.members_count), (0, 0));

    if let Some(mut raw) = h.raw().await {
        // The seed's key spelling, and no empty list left behind (§C6.1, §C6.4).
        assert_eq!(rooms.add("lobby", "c3").await.unwrap(), RoomAdd::Added);
        let list: Vec<String> = redis::cmd("LRANGE")
            .arg("actionHero:roomMembers-lobby")
            .arg(0)
            .arg(-1)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(list, ["c3"]);
        assert!(rooms.remove("lobby", "c3").await.unwrap());
        let exists: i64 = redis::cmd("EXISTS").arg("actionHero:roomMembers-lobby").query_async(&mut raw).await.unwrap();
        assert_eq!(exists, 0);
    }
}

async fn rooms_lists_the_rooms_with_members(kind: Kind) {
    let h = Harness::new(kind).await;
    let rooms = h.cluster.rooms();
    assert!(rooms.rooms().await.unwrap().is_empty());
    // Names with redis glob characters and `:` are rooms like any other.
    for (i, room) in ["b", "a", "with:colon", "star*[x]"].iter().enumerate() {
        assert_eq!(rooms.add(room, &format!("c{i}")).await.unwrap(), RoomAdd::Added);
    }
    assert_eq!(rooms.rooms().await.unwrap(), ["a", "b", "star*[x]", "with:colon"]);
    assert!(rooms.remove("b", "c0").await.unwrap());
    assert_eq!(rooms.rooms().await.unwrap(), ["a", "star*[x]", "with:colon"]);
    if let Some(mut raw) = h.raw().await {
        // Other keys under the prefix are not rooms.
        let _: () = redis::cmd("SET").arg("actionHero:roomMembersX").arg(1).query_async(&mut raw).await.unwrap();
        assert_eq!(rooms.rooms().await.unwrap(), ["a", "star*[x]", "with:colon"]);
    }
}

async fn one_current_room_per_connection_per_node(kind: Kind) {
    let h = Harness::new(kind).await;
    let rooms = h.cluster.rooms();
    assert_eq!(rooms.add("r1", "c").await.unwrap(), RoomAdd::Added);
    let err = rooms.add("r2", "c").await.unwrap_err();
    assert!(matches!(&err, ClusterError::InOtherRoom(r) if r == "r1"), "{err:?}");
    assert_eq!(err.to_string(), "Connection is in another room (r1)");
    assert!(members(&h.cluster, "r2").await.is_empty(), "a refused add writes nothing");
    assert_eq!(rooms.room_of("c").await.unwrap().as_deref(), Some("r1"));
    // Change room = remove, then add.
    assert!(rooms.remove("r1", "c").await.unwrap());
    assert_eq!(rooms.room_of("c").await.unwrap(), None);
    assert_eq!(rooms.add("r2", "c").await.unwrap(), RoomAdd::Added);
    assert_eq!(rooms.room_of("c").await.unwrap().as_deref(), Some("r2"));
    // Another node may hold the same id in another room: the rule is per node.
    let other = h.node("node-b:1").await;
    assert_eq!(other.rooms().add("r1", "c").await.unwrap(), RoomAdd::Added);
}

async fn room_index_records_this_nodes_memberships(kind: Kind) {
    let h = Harness::new(kind).await;
    let b = h.node("node-b:2").await;
    assert_eq!(h.cluster.rooms().add("lobby", "c1").await.unwrap(), RoomAdd::Added);
    assert_eq!(b.rooms().add("games", "c2").await.unwrap(), RoomAdd::Added);
    assert_eq!(h.cluster.rooms().room_of("c1").await.unwrap().as_deref(), Some("lobby"));
    assert_eq!(h.cluster.rooms().room_of("c2").await.unwrap(), None, "c2 is node b's");
    assert_eq!(b.rooms().room_of("c2").await.unwrap().as_deref(), Some("games"));
    if let Some(mut raw) = h.raw().await {
        // Layout the peers recovery reads: hash per node (':' -> '-'), field = id, value = room.
        let a_index: HashMap<String, String> =
            redis::cmd("HGETALL").arg("actionHero:roomIndex:node-a-1").query_async(&mut raw).await.unwrap();
        assert_eq!(a_index, HashMap::from([("c1".to_string(), "lobby".to_string())]));
        let b_index: HashMap<String, String> =
            redis::cmd("HGETALL").arg("actionHero:roomIndex:node-b-2").query_async(&mut raw).await.unwrap();
        assert_eq!(b_index, HashMap::from([("c2".to_string(), "games".to_string())]));
        assert!(h.cluster.rooms().remove("lobby", "c1").await.unwrap());
        let exists: i64 =
            redis::cmd("EXISTS").arg("actionHero:roomIndex:node-a-1").query_async(&mut raw).await.unwrap();
        assert_eq!(exists, 0, "the index entry goes with the membership");
    } else {
        assert!(h.cluster.rooms().remove("lobby", "c1").await.unwrap());
    }
    assert_eq!(h.cluster.rooms().room_of("c1").await.unwrap(), None);
}

async fn race_concurrent_adds_of_one_id_give_one_member(kind: Kind) {
    let h = Harness::new(kind).await;
    const NODES: usize = 4;
    const TASKS: usize = 8;
    const ROUNDS: usize = 20;
    let mut nodes = Vec::new();
    for n in 0..NODES {
        nodes.push(h.node(&format!("racer:{n}")).await);
    }
    let barrier = Arc::new(Barrier::new(NODES * TASKS));
    let mut tasks = Vec::new();
    for node in &nodes {
        for _ in 0..TASKS {
            let node = node.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                let mut added = Vec::new();
                for round in 0..ROUNDS {
                    barrier.wait().await;
                    if node.rooms().add("lobby", &format!("web-{round}")).await.unwrap() == RoomAdd::Added {
                        added.push(round);
                    }
                    tokio::task::yield_now().await;
                }
                added
            }));
        }
    }
    let mut added_per_round = [0usize; ROUNDS];
    for t in tasks {
        for round in tokio::time::timeout(WAIT, t).await.unwrap().unwrap() {
            added_per_round[round] += 1;
        }
    }
    for (round, added) in added_per_round.iter().enumerate() {
        assert_eq!(*added, 1, "round {round}: exactly one add changed the list");
    }
    let expected: Vec<String> = (0..ROUNDS).map(|round| format!("web-{round}")).collect();
    assert_eq!(members(&h.cluster, "lobby").await, expected, "each id once, in the order of the rounds");
    // Every node recorded its hold, even those told AlreadyMember.
    for node in &nodes {
        for id in &expected {
            assert_eq!(node.rooms().room_of(id).await.unwrap().as_deref(), Some("lobby"));
        }
    }
}

async fn shared_web_id_stays_while_another_node_holds_it(kind: Kind) {
    let h = Harness::new(kind).await;
    list_peers(&h, &["node-a:1", "node-b:1"]).await;
    let a = &h.cluster;
    let b = h.node("node-b:1").await;
    assert_eq!(a.rooms().add("lobby", "web").await.unwrap(), RoomAdd::Added);
    assert_eq!(b.rooms().add("lobby", "web").await.unwrap(), RoomAdd::AlreadyMember);
    assert_eq!(a.rooms().holders("web").await.unwrap(), ["node-a:1", "node-b:1"]);
    assert!(a.rooms().holders("nobody").await.unwrap().is_empty());
    assert!(!a.rooms().remove("lobby", "web").await.unwrap(), "node b still holds it: no change, no announcement");
    assert_eq!(members(a, "lobby").await, ["web"]);
    assert_eq!(a.rooms().room_of("web").await.unwrap(), None, "node a's hold is gone");
    assert_eq!(a.rooms().holders("web").await.unwrap(), ["node-b:1"]);
    assert!(b.rooms().remove("lobby", "web").await.unwrap(), "the last holder removes it");
    assert!(members(a, "lobby").await.is_empty());

    // A hold in another room does not keep the id in this one.
    assert_eq!(a.rooms().add("lobby", "web2").await.unwrap(), RoomAdd::Added);
    assert_eq!(b.rooms().add("games", "web2").await.unwrap(), RoomAdd::Added);
    assert!(a.rooms().remove("lobby", "web2").await.unwrap());
    assert_eq!(members(a, "games").await, ["web2"]);
}

async fn bad_names_are_refused(kind: Kind) {
    let h = Harness::new(kind).await;
    let rooms = h.cluster.rooms();
    assert!(matches!(rooms.add("", "c").await, Err(ClusterError::InvalidArgument(_))));
    assert!(matches!(rooms.add("r", "").await, Err(ClusterError::InvalidArgument(_))));
    assert!(matches!(rooms.remove("", "c").await, Err(ClusterError::InvalidArgument(_))));
    assert!(rooms.rooms().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_remove_ignores_holders_that_are_not_peers() {
    // Only nodes listed in actionHero:peers count as holders: a purged or never-joined node's
    // stale index must not pin a member forever.
    let h = Harness::new(Kind::Redis).await;
    list_peers(&h, &["node-a:1"]).await;
    let ghost = h.node("ghost:1").await;
    assert_eq!(h.cluster.rooms().add("lobby", "web").await.unwrap(), RoomAdd::Added);
    assert_eq!(ghost.rooms().add("lobby", "web").await.unwrap(), RoomAdd::AlreadyMember);
    assert_eq!(h.cluster.rooms().holders("web").await.unwrap(), ["node-a:1"], "ghost is not a peer");
    assert!(h.cluster.rooms().remove("lobby", "web").await.unwrap());
    assert!(members(&h.cluster, "lobby").await.is_empty());
}

/// Fast membership timing for the purge tests; no task workers.
fn fast_membership() -> ClusterSettings {
    ClusterSettings {
        tasks: TaskSettings {
            workers: 0,
            ping_interval: Duration::from_millis(100),
            dead_after: Duration::from_millis(600),
            dead_check_interval: Duration::from_millis(100),
            ..TaskSettings::default()
        },
        ..ClusterSettings::default()
    }
}

/// Starts `node`'s membership and waits until it has joined.
async fn join(node: &Cluster, shutdown: &CancellationToken) {
    let mut events = node.peer_events();
    node.start(shutdown.clone());
    tokio::time::timeout(WAIT, async {
        while !node.is_member() {
            let _ = events.recv().await;
        }
    })
    .await
    .expect("joined in time");
}

/// Members of a dead (or leaving) node: `v1` is only its own and goes; `shared` is also
/// held by the survivor and stays; the survivor's own `s1` stays; the index goes.
async fn assert_purged(h: &Harness, survivor: &Cluster) {
    assert_eq!(members(survivor, "lobby").await, ["shared", "s1"]);
    let mut raw = h.raw().await.unwrap();
    let exists: i64 = redis::cmd("EXISTS").arg("actionHero:roomIndex:victim-1").query_async(&mut raw).await.unwrap();
    assert_eq!(exists, 0, "the dead node's room index is gone");
    assert_eq!(survivor.rooms().room_of("shared").await.unwrap().as_deref(), Some("lobby"));
}

async fn victim_with_members(h: &Harness) -> (Cluster, Cluster, CancellationToken, CancellationToken) {
    let survivor = h.cluster.clone();
    let victim = h.node("victim:1").await;
    let (s_stop, v_stop) = (CancellationToken::new(), CancellationToken::new());
    join(&survivor, &s_stop).await;
    join(&victim, &v_stop).await;
    assert_eq!(victim.rooms().add("lobby", "v1").await.unwrap(), RoomAdd::Added);
    assert_eq!(victim.rooms().add("lobby", "shared").await.unwrap(), RoomAdd::Added);
    assert_eq!(survivor.rooms().add("lobby", "shared").await.unwrap(), RoomAdd::AlreadyMember);
    assert_eq!(survivor.rooms().add("lobby", "s1").await.unwrap(), RoomAdd::Added);
    (survivor, victim, s_stop, v_stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_killed_nodes_members_are_purged_after_detection() {
    // §C10.9: the victim stops pinging without leaving (as a killed process does); the
    // survivor's dead-peer check removes it and purges its memberships.
    let h = Harness::with(Kind::Redis, fast_membership()).await;
    let (survivor, victim, s_stop, v_stop) = victim_with_members(&h).await;
    let mut events = survivor.peer_events();
    v_stop.cancel();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(PeerEvent::Dead { id, .. }) = events.recv().await
                && id == "victim:1"
            {
                return;
            }
        }
    })
    .await
    .expect("the victim is declared dead");
    assert_purged(&h, &survivor).await;
    drop(victim);
    s_stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_leaving_nodes_members_are_purged() {
    // §C2.7: a graceful leave purges the node's memberships the same way.
    let h = Harness::with(Kind::Redis, fast_membership()).await;
    let (survivor, victim, s_stop, v_stop) = victim_with_members(&h).await;
    tokio::time::timeout(WAIT, victim.stop()).await.expect("leave in time");
    assert_purged(&h, &survivor).await;
    v_stop.cancel();
    s_stop.cancel();
}
