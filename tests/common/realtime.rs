//! A stand-in for Supabase Realtime's `realtime.send(jsonb, text, text,
//! boolean)` that records every call, for tests of the job_status broadcast.
use tokio_postgres::Client;

/// One recorded `realtime.send` call.
#[derive(Debug, Clone, PartialEq)]
pub struct RealtimeCall {
    pub payload: serde_json::Value,
    pub event: String,
    pub topic: String,
    pub private: bool,
    /// `pg_trigger_depth()` inside the call: 0 unless a trigger made it.
    pub trigger_depth: i32,
}

/// Creates schema `realtime` with `realtime.send` recording its calls in
/// `realtime.calls` (payload, event, topic, private, trigger_depth), as the
/// connected role (which then owns it and may call it).
pub async fn install_realtime_recorder(client: &Client) {
    client
        .batch_execute(
            "create schema realtime;
             create table realtime.calls (
               payload jsonb, event text, topic text, private boolean,
               trigger_depth int, seq bigint generated always as identity);
             create function realtime.send(payload jsonb, event text, topic text, private boolean) returns void
               language sql as $$
                 insert into realtime.calls (payload, event, topic, private, trigger_depth)
                 values (payload, event, topic, private, pg_trigger_depth()) $$;",
        )
        .await
        .expect("realtime.send stand-in");
}

/// Every call recorded so far whose payload has `"id": id`, in call order.
pub async fn realtime_calls_for(client: &Client, id: uuid::Uuid) -> Vec<RealtimeCall> {
    client
        .query(
            "select payload, event, topic, private, trigger_depth from realtime.calls
             where payload->>'id' = $1 order by seq",
            &[&id.to_string()],
        )
        .await
        .expect("read realtime.calls")
        .iter()
        .map(|r| RealtimeCall {
            payload: r.get(0),
            event: r.get(1),
            topic: r.get(2),
            private: r.get(3),
            trigger_depth: r.get(4),
        })
        .collect()
}
