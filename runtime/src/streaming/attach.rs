//! A streaming attach: the client's streams joined to the container's own stdio, which its shim
//! keeps and serves on the attach socket (see `keelson_shim::attach`).

use super::remotecommand::{BoxWrite, Outcome, RemoteIo, wait_gone};
use keelson_shim::attach::{self, FrameKind};
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// Which container, from the cached CRI `AttachRequest`.
#[derive(Debug, Clone)]
pub struct AttachPlan {
    pub container_id: String,
    pub socket: PathBuf,
}

/// Runs the attach session until the container exits or the client leaves.
pub async fn serve(plan: AttachPlan, mut io: RemoteIo) {
    let outcome = match run(&plan, &mut io).await {
        Ok(()) => Outcome::Exited {
            code: 0,
            command: vec![],
        },
        Err(message) => Outcome::Failed(message),
    };
    io.finish(outcome).await;
}

async fn write_to(w: &mut Option<BoxWrite>, data: &[u8]) {
    if let Some(out) = w.as_mut()
        && (out.write_all(data).await.is_err() || out.flush().await.is_err())
    {
        *w = None;
    }
}

async fn run(plan: &AttachPlan, io: &mut RemoteIo) -> Result<(), String> {
    let sock = UnixStream::connect(&plan.socket).await.map_err(|e| {
        format!(
            "attaching to container {}: its shim does not answer: {e}",
            plan.container_id
        )
    })?;
    let (mut from_shim, mut to_shim) = sock.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if to_shim.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let mut helpers = vec![writer];
    if let Some(mut stdin) = io.stdin.take() {
        let tx = tx.clone();
        helpers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; attach::MAX_PAYLOAD];
            loop {
                let n = match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut frame = Vec::with_capacity(n + attach::HEADER_LEN);
                attach::encode_data(FrameKind::Stdin, &buf[..n], &mut frame);
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
            let mut frame = Vec::new();
            attach::encode_frame(FrameKind::StdinClose, &[], &mut frame);
            let _ = tx.send(frame).await;
        }));
    }
    if let Some(mut sizes) = io.resize.take() {
        let tx = tx.clone();
        helpers.push(tokio::spawn(async move {
            while let Some(s) = sizes.recv().await {
                let mut frame = Vec::new();
                attach::encode_resize(s.width, s.height, &mut frame);
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);

    let mut stdout = io.stdout.take();
    let mut stderr = io.stderr.take();
    let mut gone = io.gone.clone();
    let mut buf: Vec<u8> = Vec::with_capacity(2 * attach::MAX_PAYLOAD);
    let mut chunk = vec![0u8; 64 * 1024];
    let result = loop {
        let n = tokio::select! {
            r = from_shim.read(&mut chunk) => match r {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) => break Err(format!("reading from the shim of container {}: {e}", plan.container_id)),
            },
            _ = wait_gone(&mut gone) => break Ok(()),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut exited = false;
        let mut used = 0;
        loop {
            match attach::decode_frame(&buf[used..]) {
                Ok(Some((kind, range, consumed))) => {
                    let payload = &buf[used + range.start..used + range.end];
                    match kind {
                        FrameKind::Stdout => write_to(&mut stdout, payload).await,
                        FrameKind::Stderr => write_to(&mut stderr, payload).await,
                        FrameKind::Exit => exited = true,
                        _ => {}
                    }
                    used += consumed;
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(format!(
                        "container {}: malformed attach frame from its shim: {e}",
                        plan.container_id
                    ));
                }
            }
        }
        buf.drain(..used);
        if exited {
            break Ok(());
        }
    };
    for h in helpers {
        h.abort();
    }
    for w in [stdout, stderr].into_iter().flatten() {
        let mut w = w;
        let _ = w.shutdown().await;
    }
    result
}
