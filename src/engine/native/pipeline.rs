//! One ordered pipeline for the engine's commands: every command is queued the moment it is
//! issued, and a driver sends whatever has queued up as one pipeline, in queue order. So one
//! round trip carries many clients' commands under load, and a connection's publishes can be
//! on their way while it reads its next frame, still reaching redis in the order they were
//! issued, ahead of anything the same connection does next. On a Redis Cluster each
//! partition of the layout has its own pipeline, whose commands all go to the partition's
//! slot.

use crate::redis_conn::TimedConnection;
use redis::Value;
use redis::aio::ConnectionLike;
use tokio::sync::{mpsc, oneshot};

/// Most commands sent in one pipeline.
const MOST: usize = 512;

struct Request {
    cmd: redis::Cmd,
    reply: oneshot::Sender<redis::RedisResult<Value>>,
}

/// The queue in front of the driver; cheap to clone.
#[derive(Clone)]
pub(super) struct Pipeline {
    queue: mpsc::UnboundedSender<Request>,
    /// For what does not go through the queue (pipelines of its own, connection settings).
    direct: TimedConnection,
}

impl Pipeline {
    /// Starts the driver on `con`; it ends when every clone is dropped.
    pub(super) fn start(con: TimedConnection) -> Self {
        let (queue, requests) = mpsc::unbounded_channel();
        tokio::spawn(drive(con.clone(), requests));
        Self { queue, direct: con }
    }

    /// Queues `cmd` now; the answer arrives when its pipeline returns.
    pub(super) fn send(&self, cmd: redis::Cmd) -> oneshot::Receiver<redis::RedisResult<Value>> {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(request)) = self.queue.send(Request { cmd, reply }) {
            let _ = request.reply.send(Err(unavailable("engine pipeline stopped")));
        }
        answer
    }
}

fn unavailable(why: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::BrokenPipe, why.to_string()))
}

async fn drive(mut con: TimedConnection, mut requests: mpsc::UnboundedReceiver<Request>) {
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        while batch.len() < MOST {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        // A lone command goes as itself: on a Redis Cluster a keyless one (SCRIPT LOAD) is
        // then routed by its own rule (every master) rather than as a pipeline.
        if batch.len() == 1
            && let Some(request) = batch.pop()
        {
            // A server error comes back as a value here: make it the error it is (a
            // pipeline with `ignore_errors` does the same for each of its answers).
            let result = con.req_packed_command(&request.cmd).await.and_then(Value::extract_error);
            let _ = request.reply.send(result);
            continue;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for request in &batch {
            pipe.add_command(request.cmd.clone());
        }
        let results: redis::RedisResult<Vec<redis::RedisResult<Value>>> = pipe.query_async(&mut con).await;
        match results {
            Ok(results) if results.len() == batch.len() => {
                for (request, result) in batch.into_iter().zip(results) {
                    let _ = request.reply.send(result);
                }
            }
            Ok(_) => {
                for request in batch {
                    let _ = request.reply.send(Err(unavailable("pipeline answer of the wrong length")));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for request in batch {
                    let _ = request.reply.send(Err(unavailable(&why)));
                }
            }
        }
    }
}

impl ConnectionLike for Pipeline {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        // Queued here, at the call, not when the future is first polled.
        let answer = self.send(cmd.clone());
        Box::pin(async move {
            match answer.await {
                Ok(result) => result,
                Err(_) => Err(unavailable("engine pipeline stopped")),
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        self.direct.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.direct.get_db()
    }
}
