//! Detections to an MQTT broker, the way edge video systems publish events: every inferred
//! frame's JSON on `<prefix>/detections`. The broker may come and go: messages wait in the edge's
//! bounded broadcast while it is away, the oldest are dropped (and counted) when it is full, and
//! the connection is retried with backoff. Publishing never slows inference down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::broadcast::error::RecvError;

use crate::edge::Edge;
use crate::metrics::Metrics;

/// The broker's user name from the contract's variable (set from a Secret in a cluster).
pub fn env_username() -> Option<String> {
    std::env::var(autotuner_api::contract::ENV_MQTT_USERNAME)
        .ok()
        .filter(|v| !v.is_empty())
}

/// The broker's password from the contract's variable.
pub fn env_password() -> Option<String> {
    std::env::var(autotuner_api::contract::ENV_MQTT_PASSWORD)
        .ok()
        .filter(|v| !v.is_empty())
}

/// Where and how to publish.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// `mqtt://host[:port]`.
    pub url: String,
    /// Messages go to `<topic_prefix>/detections`.
    pub topic_prefix: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// 0 or 1.
    pub qos: u8,
    pub client_id: String,
}

impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &self.url)
            .field("topic_prefix", &self.topic_prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("qos", &self.qos)
            .finish()
    }
}

impl MqttConfig {
    /// The broker's host and port from `mqtt://host[:port]`.
    pub fn broker(&self) -> Result<(String, u16), String> {
        let rest = self
            .url
            .strip_prefix("mqtt://")
            .ok_or_else(|| format!("MQTT URL {:?} must start with mqtt://", self.url))?
            .trim_end_matches('/');
        if rest.is_empty() || rest.contains(['/', '@']) {
            return Err(format!(
                "MQTT URL {:?} must be mqtt://host or mqtt://host:port",
                self.url
            ));
        }
        match rest.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => port
                .parse()
                .map(|port| (host.to_string(), port))
                .map_err(|_| format!("MQTT URL {:?} has a bad port", self.url)),
            Some(_) => Err(format!("MQTT URL {:?} has no host", self.url)),
            None => Ok((rest.to_string(), 1883)),
        }
    }

    pub fn topic(&self) -> String {
        format!("{}/detections", self.topic_prefix.trim_end_matches('/'))
    }

    fn qos(&self) -> QoS {
        if self.qos >= 1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        }
    }
}

/// A running publisher.
#[derive(Debug)]
pub struct Publisher {
    client: AsyncClient,
    /// Frames taken from the edge's broadcast (published or dropped).
    handled: Arc<AtomicU64>,
    connection: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// At the end of a run (a file): hands over what the edge published up to now, then
    /// disconnects cleanly, within `timeout`.
    pub async fn finish(self, edge: &Edge, timeout: Duration) {
        let target = edge.published();
        let deadline = tokio::time::Instant::now() + timeout;
        while self.handled.load(Ordering::SeqCst) < target && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Requests go out in order: the disconnect follows the last message.
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout_at(deadline, self.connection).await;
    }
}

/// Starts publishing the edge's detections. A bad URL is refused here, before anything runs.
pub fn start(config: MqttConfig, edge: &Arc<Edge>, metrics: Metrics) -> Result<Publisher, String> {
    let (host, port) = config.broker()?;
    let mut options = MqttOptions::new(config.client_id.clone(), host, port);
    options.set_keep_alive(Duration::from_secs(15));
    options.set_max_packet_size(1 << 20, 1 << 20);
    if let Some(user) = &config.username {
        options.set_credentials(user.clone(), config.password.clone().unwrap_or_default());
    }
    // A small request queue: the edge's broadcast is the buffer that drops the oldest.
    let (client, mut events) = AsyncClient::new(options, 16);
    let connected = metrics.mqtt_connected.clone();
    let shown = config.url.clone();
    let connection = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        let mut was_up = false;
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    connected.set(0);
                    return;
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    tracing::info!(broker = shown, "connected to the MQTT broker");
                    connected.set(1);
                    was_up = true;
                    backoff = Duration::from_millis(250);
                }
                Ok(_) => {}
                Err(e) => {
                    connected.set(0);
                    if was_up {
                        tracing::warn!(broker = shown, error = %e, "lost the MQTT broker; reconnecting");
                        was_up = false;
                    } else {
                        tracing::debug!(broker = shown, error = %e, retry_in = ?backoff, "MQTT broker unreachable");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    });
    let mut frames = edge.subscribe();
    let (topic, qos) = (config.topic(), config.qos());
    let published = metrics.mqtt_messages.with_label_values(&["published"]);
    let dropped = metrics.mqtt_messages.with_label_values(&["dropped"]);
    let handled = Arc::new(AtomicU64::new(0));
    let (counter, sender) = (handled.clone(), client.clone());
    tokio::spawn(async move {
        let client = sender;
        loop {
            match frames.recv().await {
                Ok(frame) => {
                    // Waits while the broker is away (the client's queue is full); meanwhile
                    // the broadcast keeps the newest frames and drops the oldest.
                    if client
                        .publish(topic.as_str(), qos, false, frame.json.clone().into_bytes())
                        .await
                        .is_ok()
                    {
                        published.inc();
                    } else {
                        dropped.inc();
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                Err(RecvError::Lagged(n)) => {
                    dropped.inc_by(n);
                    counter.fetch_add(n, Ordering::SeqCst);
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    Ok(Publisher {
        client,
        handled,
        connection,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> MqttConfig {
        MqttConfig {
            url: url.into(),
            topic_prefix: "autotuner/ns/gate/".into(),
            username: Some("edge".into()),
            password: Some("s3cret".into()),
            qos: 0,
            client_id: "test".into(),
        }
    }

    #[test]
    fn the_broker_comes_from_the_url_and_bad_urls_say_what_is_wrong() {
        assert_eq!(
            config("mqtt://127.0.0.1:1884").broker(),
            Ok(("127.0.0.1".into(), 1884))
        );
        assert_eq!(config("mqtt://broker/").broker(), Ok(("broker".into(), 1883)));
        for bad in [
            "tcp://broker",
            "mqtt://",
            "mqtt://u:p@broker",
            "mqtt://broker:x",
            "mqtt://b/topic",
        ] {
            assert!(config(bad).broker().is_err(), "{bad}");
        }
        assert_eq!(config("mqtt://b").topic(), "autotuner/ns/gate/detections");
    }

    #[test]
    fn the_password_stays_out_of_debug_output() {
        let shown = format!("{:?}", config("mqtt://b"));
        assert!(!shown.contains("s3cret") && shown.contains("redacted"), "{shown}");
    }
}
