//! `host hash-password` and `host new-token`: what a `[[user]]` entry of
//! server.toml holds, without the password or token ever being written
//! there.
use std::io::BufRead;

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args)]
pub struct HashPasswordArgs {}

/// Reads a password (one line) from stdin and prints its argon2 hash for
/// `password = "…"`.
pub fn hash_password(_: HashPasswordArgs) -> Result<u8> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']);
    let n = password.chars().count();
    if !(8..=1024).contains(&n) {
        bail!("a password of 8 to 1024 characters, on stdin");
    }
    println!("{}", crate::serve::access::password::hash(password)?);
    Ok(0)
}

#[derive(Args)]
pub struct NewTokenArgs {}

/// Prints a new random API token and the line its user's entry gets.
pub fn new_token(_: NewTokenArgs) -> Result<u8> {
    let token = crate::serve::access::session::random_token()?;
    println!("token: {token}");
    println!(
        "tokens = [\"sha256:{}\"]",
        crate::digest::sha256_hex(token.as_bytes())
    );
    Ok(0)
}
