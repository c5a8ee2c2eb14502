//! Cluster commands on `/actionHero/cluster` (spec §C7.1, §C7.3, v9's RPC shape of §6.3):
//! every node answers `ping`, registered methods answer with their result or error, a call
//! targeted at a chat connection runs only on its node, a method nobody knows ends in
//! `RPC Timeout`, and a node with another token is not heard.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use actioncluster::commands::{COMMAND_CHANNEL, DEFAULT_COMMAND_TIMEOUT, PING};
use actioncluster::{CommandCall, CommandError, Config, Node, NodeBuilder};
use common::redis_server::RedisServer;
use common::{WAIT, within};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use std::time::Duration;

const TOKEN: &str = "test-token";

/// Long enough for a loaded machine, short enough for the timeout cases.
const SHORT: Duration = Duration::from_millis(500);

fn builder(token: &str, redis: Option<&RedisServer>) -> NodeBuilder {
    Node::builder(Config {
        host: "127.0.0.1".into(),
        port: 0,
        timeout: common::DEFAULT_TIMEOUT,
        server_token: token.into(),
        redis_url: redis.map(RedisServer::url),
        ..Config::default()
    })
}

async fn start(builder: NodeBuilder) -> Node {
    within(WAIT, "node start", builder.start()).await.expect("node starts")
}

fn id(node: &Node) -> String {
    node.cluster().node_id().to_string()
}

/// Waits until every node is a cluster member and listens for commands.
async fn members(nodes: &[&Node]) {
    for node in nodes {
        let mut events = node.cluster().peer_events();
        within(WAIT, "membership", async {
            while !node.cluster().is_member() {
                let _ = events.recv().await;
            }
        })
        .await;
        within(WAIT, "command listener", node.commands().ready()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answers_ping_and_its_registered_methods() {
    let node = start(
        builder(TOKEN, None)
            .command("echo", |call: CommandCall| async move { Ok(json!({"args": call.args, "from": call.from})) })
            .command("fail", |_call| async { Err("boom".to_string()) }),
    )
    .await;
    let commands = node.commands();
    let pong = commands.call(PING, vec![], None, WAIT).await.unwrap();
    assert_eq!(pong.server_id, id(&node));
    assert_eq!(pong.result().unwrap(), &json!(id(&node)));
    assert_eq!(pong.response, [Value::Null, json!(id(&node))], "v9 callback arguments");

    let echo = commands.call("echo", vec![json!(1), json!("two")], None, WAIT).await.unwrap();
    assert_eq!(echo.result().unwrap(), &json!({"args": [1, "two"], "from": id(&node)}));
    let failed = commands.call("fail", vec![], None, WAIT).await.unwrap();
    assert_eq!(failed.result(), Err("boom".to_string()));
    assert_eq!(failed.response, [json!("boom"), Value::Null]);

    // Registered later, answered at once.
    commands.register("late", |_call| async { Ok(json!("here")) });
    assert_eq!(commands.call("late", vec![], None, WAIT).await.unwrap().result().unwrap(), &json!("here"));

    let err = commands.call("fly", vec![], None, SHORT).await.unwrap_err();
    assert!(matches!(err, CommandError::Timeout));
    assert_eq!(err.to_string(), "RPC Timeout");
    let all = commands.call_all(PING, vec![], WAIT).await.unwrap();
    assert_eq!(all.iter().map(|r| r.server_id.clone()).collect::<Vec<_>>(), [id(&node)]);
    assert_eq!(DEFAULT_COMMAND_TIMEOUT, Duration::from_millis(5000));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_cross_the_cluster_and_a_wrong_token_is_not_heard() {
    let redis = RedisServer::start().await;
    let x = start(builder(TOKEN, Some(&redis))).await;
    let y = start(builder(TOKEN, Some(&redis))).await;
    let z = start(builder(TOKEN, Some(&redis)).command("double", |call: CommandCall| async move {
        let n = call.args.first().and_then(Value::as_i64).ok_or("a number is required")?;
        Ok(json!(n * 2))
    }))
    .await;
    members(&[&x, &y, &z]).await;

    // Every live peer answers ping.
    let answers = x.commands().call_all(PING, vec![], WAIT).await.unwrap();
    let mut expected = vec![id(&x), id(&y), id(&z)];
    expected.sort();
    assert_eq!(answers.iter().map(|r| r.server_id.clone()).collect::<Vec<_>>(), expected);
    for answer in &answers {
        assert_eq!(answer.result().unwrap(), &json!(answer.server_id));
    }

    // Only z knows `double`: the others stay silent, z's answer comes back.
    let doubled = x.commands().call("double", vec![json!(21)], None, WAIT).await.unwrap();
    assert_eq!((doubled.server_id.as_str(), doubled.result().unwrap()), (id(&z).as_str(), &json!(42)));
    let refused = y.commands().call("double", vec![json!("x")], None, WAIT).await.unwrap();
    assert_eq!(refused.result(), Err("a number is required".to_string()));

    // A call about a chat connection runs on the node holding it only.
    y.chat().register("conn-1", Map::new());
    let about = x.commands().call(PING, vec![], Some("conn-1"), WAIT).await.unwrap();
    assert_eq!(about.server_id, id(&y));
    let nobody = x.commands().call(PING, vec![], Some("conn-unknown"), SHORT).await.unwrap_err();
    assert!(matches!(nobody, CommandError::Timeout), "{nobody:?}");

    // The wire shape is v9's, with the caller's id and token.
    let wiretap = x.client().build().await.unwrap();
    let mut wire = wiretap.subscribe(COMMAND_CHANNEL).await.unwrap();
    z.commands().call("double", vec![json!(1)], None, WAIT).await.unwrap();
    let request = within(WAIT, "request on the wire", wire.next()).await.unwrap().json();
    assert_eq!(
        (&request["messageType"], &request["method"], &request["args"], &request["connectionId"]),
        (&json!("do"), &json!("double"), &json!([1]), &Value::Null)
    );
    assert_eq!((&request["serverId"], &request["serverToken"]), (&json!(id(&z)), &json!(TOKEN)));
    let response = within(WAIT, "response on the wire", wire.next()).await.unwrap().json();
    assert_eq!(
        (&response["messageType"], &response["requestId"], &response["response"]),
        (&json!("doResponse"), &request["requestId"], &json!([null, 2]))
    );

    // A node with another token is not heard by the cluster (its own answer only).
    let rogue = start(builder("another-token", Some(&redis))).await;
    members(&[&rogue]).await;
    // (call_all waits for the peers that never answer: the whole timeout.)
    let heard = rogue.commands().call_all(PING, vec![], Duration::from_secs(2)).await.unwrap();
    assert_eq!(heard.iter().map(|r| r.server_id.clone()).collect::<Vec<_>>(), [id(&rogue)]);
    for node in [x, y, z, rogue] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_extension_refuses_its_command_client_still_starts() {
    let node =
        start(builder(TOKEN, None).extension(common::RefuseAll).command("echo", |_call| async { Ok(json!(1)) })).await;
    let err = node.commands().call(PING, vec![], None, SHORT).await.unwrap_err();
    assert!(matches!(err, CommandError::Subscribe(_)), "{err:?}");
    node.shutdown().await;
}
