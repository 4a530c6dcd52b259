//! PostgreSQL `LISTEN`/`NOTIFY` for collectors sharing one database: [`Store::notify`] sends a
//! payload on a channel to every listening collector; [`Store::listen`] receives them (on a
//! dedicated connection, reconnecting after a loss). On SQLite there are no other collectors:
//! `notify` does nothing and `listen` yields nothing.

use futures::StreamExt;
use tokio::sync::mpsc;

use super::{Backend, Result, Store, StoreError};

/// Largest payload PostgreSQL accepts on a channel (bytes, less than its 8000).
pub const MAX_PAYLOAD: usize = 7_900;

impl Store {
    /// Sends `payload` on `channel` to every collector listening (after this statement's
    /// transaction, which is its own).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        let Some(pool) = self.pg_pool() else {
            return Ok(());
        };
        if payload.len() > MAX_PAYLOAD {
            return Err(StoreError::Type(format!(
                "notification of {} bytes is over {MAX_PAYLOAD}",
                payload.len()
            )));
        }
        let client = pool
            .get()
            .await
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        client
            .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
            .await?;
        Ok(())
    }

    /// The payloads sent on `channel` from now on (by any collector, this one included). The
    /// listening task reconnects after a lost connection (notifications sent meanwhile are
    /// missed). On SQLite the receiver never yields.
    pub fn listen(&self, channel: &str) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel(1024);
        if let Backend::Pg { url, .. } = &self.inner.backend {
            let (url, channel) = (url.clone(), channel.to_string());
            tokio::spawn(async move {
                while !tx.is_closed() {
                    if let Err(e) = listen_once(&url, &channel, &tx).await {
                        tracing::warn!(error = %e, channel, "LISTEN connection lost; reconnecting.");
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            });
        } else {
            // Keep the sender alive so the receiver waits instead of ending.
            std::mem::forget(tx);
        }
        rx
    }
}

async fn listen_once(url: &str, channel: &str, tx: &mpsc::Sender<String>) -> Result<()> {
    let (client, mut conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
    let listen = format!("LISTEN \"{}\"", channel.replace('"', ""));
    let subscribe = async {
        client.batch_execute(&listen).await?;
        // Keep the client (and so the connection) alive while messages flow.
        std::future::pending::<()>().await;
        Ok::<(), StoreError>(())
    };
    tokio::pin!(subscribe);
    loop {
        tokio::select! {
            res = &mut subscribe => return res,
            msg = messages.next() => match msg {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_string()).await.is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err(StoreError::Pool("LISTEN connection closed".into())),
            },
        }
    }
}
