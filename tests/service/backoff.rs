//! The federation sender's backoff (spec: Server-Server API, "Transactions";
//! the schedule is ours: 2 s after the first failure, doubling, capped at 10
//! minutes), walked on a clock the test moves instead of waiting it out.

use std::time::Duration;

use lattice::{
    clock::ManualClock,
    service::federation::{self, sender},
};
use ruma::ServerName;
use serde_json::json;

/// A destination that fails at once and never touches the network: the
/// federation address policy refuses loopback (and were it allowed, nothing
/// listens on port 1).
const DEAD: &str = "127.0.0.1:1";

async fn queue_edu(app: &lattice::service::AppState, destination: &str) {
    let edu = json!({"edu_type": "m.typing", "content": {}});
    federation::enqueue_edu(app, [destination.to_owned()], &edu, None)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failing_destination_backs_off_doubling_to_the_cap() {
    let clock = ManualClock::new(1_700_000_000_000);
    let mut app = crate::state().await;
    app.clock = clock.clock();
    queue_edu(&app, DEAD).await;
    assert_eq!(sender::ready_destinations(&app).await.unwrap(), [DEAD]);

    let schedule_secs = [2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600, 600];
    for (failure, secs) in schedule_secs.into_iter().enumerate() {
        sender::deliver(&app, DEAD).await;
        // Backing off: not ready now, nor a millisecond before the retry time…
        assert!(
            sender::ready_destinations(&app).await.unwrap().is_empty(),
            "failure {}: still ready right after failing",
            failure + 1
        );
        clock.advance(Duration::from_millis(secs * 1000 - 1));
        assert!(
            sender::ready_destinations(&app).await.unwrap().is_empty(),
            "failure {}: ready before {secs} s",
            failure + 1
        );
        // …and ready exactly then, with its queue intact.
        clock.advance(Duration::from_millis(1));
        assert_eq!(
            sender::ready_destinations(&app).await.unwrap(),
            [DEAD],
            "failure {}: not ready after {secs} s",
            failure + 1
        );
    }
}

#[tokio::test]
async fn one_destination_backing_off_does_not_hold_up_another() {
    let clock = ManualClock::new(1_700_000_000_000);
    let mut app = crate::state().await;
    app.clock = clock.clock();
    let other = "127.0.0.2:1";
    queue_edu(&app, DEAD).await;
    sender::deliver(&app, DEAD).await;
    queue_edu(&app, other).await;
    assert_eq!(sender::ready_destinations(&app).await.unwrap(), [other]);
}

#[tokio::test]
async fn hearing_from_a_destination_ends_its_backoff_at_once() {
    let clock = ManualClock::new(1_700_000_000_000);
    let mut app = crate::state().await;
    app.clock = clock.clock();
    queue_edu(&app, DEAD).await;
    for _ in 0..5 {
        sender::deliver(&app, DEAD).await;
        clock.advance(Duration::from_secs(600));
    }
    sender::deliver(&app, DEAD).await;
    assert!(sender::ready_destinations(&app).await.unwrap().is_empty());
    // An inbound request from it (any authenticated one) proves it is up.
    sender::heard_from(&app, &ServerName::parse(DEAD).unwrap()).await;
    assert_eq!(sender::ready_destinations(&app).await.unwrap(), [DEAD]);
    // A server that was never backed off is not touched.
    sender::heard_from(&app, &ServerName::parse("elsewhere.test").unwrap()).await;
    assert_eq!(sender::ready_destinations(&app).await.unwrap(), [DEAD]);
}
