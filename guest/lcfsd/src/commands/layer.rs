//! `lcfsd layer …`: layer management through a running daemon's API socket.

use std::collections::BTreeMap;

use anyhow::Context;
use hyper::Method;

use crate::api::client::call;
use crate::api::{CommitLayer, CreateLayer, Layer};
use crate::cli::LayerCommand;

pub fn run(command: LayerCommand) -> anyhow::Result<()> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start a runtime")?;
    runtime.block_on(run_async(command))
}

fn path_segment(name: &str) -> String {
    // Layer names are file names: no '/', but '%', '?' and '#' need escaping in a URL.
    let mut out = String::new();
    for b in name.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' | b'@' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

async fn run_async(command: LayerCommand) -> anyhow::Result<()> {
    match command {
        LayerCommand::Create { id, parent, view, labels, api_socket } => {
            let body = CreateLayer {
                name: id,
                parent,
                kind: Some(if view { "view" } else { "writable" }.to_string()),
                labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
            };
            let layer: Option<Layer> = call(&api_socket, Method::POST, "/v1/layers", Some(&body)).await?;
            if let Some(l) = layer {
                println!("created {} layer {}", l.kind, l.name);
            }
        }
        LayerCommand::Commit { key, name, api_socket } => {
            let body = CommitLayer { name, labels: None };
            let path = format!("/v1/layers/{}/commit", path_segment(&key));
            let layer: Option<Layer> = call(&api_socket, Method::POST, &path, Some(&body)).await?;
            if let Some(l) = layer {
                println!("committed {key} as {}", l.name);
            }
        }
        LayerCommand::Remove { id, api_socket } => {
            let path = format!("/v1/layers/{}", path_segment(&id));
            call::<(), serde_json::Value>(&api_socket, Method::DELETE, &path, None).await?;
            println!("removed {id}");
        }
        LayerCommand::List { json, api_socket } => {
            let layers: Vec<Layer> =
                call::<(), Vec<Layer>>(&api_socket, Method::GET, "/v1/layers", None).await?.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&layers)?);
            } else {
                println!("{:<40} {:<10} {:<40} {:>12} {:>8}", "NAME", "KIND", "PARENT", "BYTES", "INODES");
                for l in layers {
                    println!(
                        "{:<40} {:<10} {:<40} {:>12} {:>8}",
                        l.name,
                        l.kind,
                        l.parent.as_deref().unwrap_or("-"),
                        l.bytes,
                        l.inodes
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_for_urls() {
        assert_eq!(path_segment("sha256:abc-1"), "sha256:abc-1");
        assert_eq!(path_segment("a b%?#"), "a%20b%25%3F%23");
    }
}
