//! Signed tree heads in the C2SP formats: `tlog-checkpoint` bodies inside `signed-note` notes.
//!
//! A checkpoint body is three `\n`-terminated lines: the origin (which log), the tree size in
//! decimal, the root hash in base64. A note is the body, a blank line, and one line per
//! signature: `— <key name> <base64(key hash ‖ signature)>`, the key hash being the first four
//! bytes of `SHA-256(name ‖ "\n" ‖ 0x01 ‖ Ed25519 public key)`. Anyone holding the public key
//! can check a checkpoint without trusting the gate's files or listener.
//!
//! Owns the byte layout of both formats and the checks on them; must never accept a note whose
//! signature by the given key does not cover the exact body bytes, and never accept a signature
//! line it cannot attribute to that key. Pure: no I/O.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::{hash_from_base64, to_base64, Hash};

/// Starts every signature line (U+2014 EM DASH, then a space), as `signed-note` requires.
pub const SIG_PREFIX: &str = "\u{2014} ";

/// The signature-type byte of Ed25519 in the key-hash derivation.
const ED25519: u8 = 0x01;

/// A tree head: which log, how many records, and the root over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The `tlog-checkpoint` body: the bytes that are signed.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            to_base64(&self.root)
        )
    }

    /// Parses a body; extension lines after the root are allowed and ignored.
    pub fn parse_body(body: &str) -> Result<Checkpoint, String> {
        let lines = body
            .strip_suffix('\n')
            .ok_or("a checkpoint body ends with a newline")?;
        let mut lines = lines.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err("the checkpoint has no origin line".into());
        }
        let size_line = lines.next().ok_or("the checkpoint has no size line")?;
        // Decimal without sign or leading zeros, as the format says.
        if size_line.is_empty()
            || !size_line.bytes().all(|b| b.is_ascii_digit())
            || (size_line.len() > 1 && size_line.starts_with('0'))
        {
            return Err(format!(
                "the checkpoint size `{size_line}` is not a decimal number"
            ));
        }
        let size = size_line
            .parse()
            .map_err(|_| format!("the checkpoint size `{size_line}` is too large"))?;
        let root_line = lines.next().ok_or("the checkpoint has no root hash line")?;
        let root = hash_from_base64(root_line).map_err(|e| format!("the checkpoint root: {e}"))?;
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

/// First four bytes of `SHA-256(name ‖ "\n" ‖ 0x01 ‖ key)`: names the key in a signature line.
pub fn key_hash(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([ED25519]);
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// The verifier key string of `signed-note` (`name+hex key hash+base64(0x01 ‖ key)`), which
/// note tools such as Go's `golang.org/x/mod/sumdb/note` accept.
pub fn verifier_key(name: &str, key: &VerifyingKey) -> String {
    let mut typed = vec![ED25519];
    typed.extend_from_slice(key.as_bytes());
    format!(
        "{name}+{}+{}",
        hex::encode(key_hash(name, key)),
        STANDARD.encode(typed)
    )
}

/// Reads a public key: a `signed-note` verifier key (its name and hash are checked), or what
/// [`crate::approval::parse_public_key`] takes (SPKI PEM, raw base64).
pub fn parse_verifier(text: &str) -> Result<VerifyingKey, String> {
    let text = text.trim();
    let parts: Vec<&str> = text.split('+').collect();
    if let [name, hash, typed] = parts.as_slice() {
        if !name.is_empty() && hash.len() == 8 && !text.starts_with("-----") {
            let typed = STANDARD
                .decode(typed)
                .map_err(|_| "the verifier key's key is not base64".to_owned())?;
            let raw: [u8; 32] = match typed.split_first() {
                Some((&ED25519, raw)) => raw
                    .try_into()
                    .map_err(|_| "an Ed25519 public key is 32 bytes".to_owned())?,
                _ => return Err("the verifier key is not an Ed25519 key".into()),
            };
            let key = VerifyingKey::from_bytes(&raw)
                .map_err(|e| format!("not a valid Ed25519 point: {e}"))?;
            if hex::encode(key_hash(name, &key)) != *hash {
                return Err("the verifier key's hash does not match its name and key".into());
            }
            return Ok(key);
        }
    }
    crate::approval::parse_public_key(text)
}

/// Signs notes with one Ed25519 key under one name.
#[derive(Debug)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    hash: [u8; 4],
}

impl NoteSigner {
    /// `name` must be non-empty and hold no space, `+` or newline (the format's rule).
    pub fn new(name: &str, key: SigningKey) -> Result<NoteSigner, String> {
        if name.is_empty() || name.contains([' ', '+', '\n', '\t']) {
            return Err(format!(
                "`{name}` cannot name a note key: it must be non-empty without spaces or `+`"
            ));
        }
        let hash = key_hash(name, &key.verifying_key());
        Ok(NoteSigner {
            name: name.to_owned(),
            key,
            hash,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The whole note: `body`, a blank line, one signature line.
    pub fn sign(&self, body: &str) -> String {
        let signature = self.key.sign(body.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&self.hash);
        blob.extend_from_slice(&signature.to_bytes());
        format!(
            "{body}\n{SIG_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(blob)
        )
    }
}

/// A note split into its body and signature lines (not verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note<'a> {
    pub body: &'a str,
    /// (key name, key hash, signature bytes after the hash)
    pub signatures: Vec<(&'a str, [u8; 4], Vec<u8>)>,
}

/// Splits `text` into body and signatures; refuses anything not shaped like a note.
pub fn parse_note(text: &str) -> Result<Note<'_>, String> {
    if text.contains(|c: char| c.is_control() && c != '\n') {
        return Err("the note holds control characters".into());
    }
    let split = text
        .rfind("\n\n")
        .ok_or("the note has no blank line before its signatures")?;
    let body = &text[..split + 1];
    let sigs = &text[split + 2..];
    let sigs = sigs
        .strip_suffix('\n')
        .ok_or("the note's last signature line ends without a newline")?;
    let mut signatures = Vec::new();
    for line in sigs.split('\n') {
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or_else(|| format!("`{line}` is not a signature line (`— name signature`)"))?;
        let (name, blob) = rest
            .split_once(' ')
            .ok_or_else(|| format!("signature line `{line}` has no signature"))?;
        let blob = STANDARD
            .decode(blob)
            .map_err(|_| format!("the signature of `{name}` is not base64"))?;
        if name.is_empty() || blob.len() < 5 {
            return Err(format!("signature line `{line}` is malformed"));
        }
        let hash = [blob[0], blob[1], blob[2], blob[3]];
        signatures.push((name, hash, blob[4..].to_vec()));
    }
    if signatures.is_empty() {
        return Err("the note has no signature".into());
    }
    Ok(Note { body, signatures })
}

/// Verifies that `text` is a note signed by `key` (under whatever name its line gives) and
/// returns the checkpoint in its body.
pub fn verify_checkpoint(text: &str, key: &VerifyingKey) -> Result<Checkpoint, String> {
    let note = parse_note(text)?;
    let mut names = Vec::new();
    for (name, hash, sig) in &note.signatures {
        if key_hash(name, key) != *hash {
            names.push(format!("`{name}`"));
            continue;
        }
        let sig = Signature::from_slice(sig)
            .map_err(|_| format!("the signature of `{name}` is not an Ed25519 signature"))?;
        key.verify(note.body.as_bytes(), &sig).map_err(|_| {
            format!("the signature of `{name}` does not verify: the checkpoint was altered or signed by another key")
        })?;
        return Checkpoint::parse_body(note.body);
    }
    Err(format!(
        "the checkpoint is not signed by the given key (signed by {})",
        names.join(", ")
    ))
}

/// Splits the concatenated notes of a checkpoints file; an incomplete last note (a crash
/// mid-append) is left out and reported as the second value.
pub fn split_notes(text: &str) -> (Vec<&str>, bool) {
    let mut notes = Vec::new();
    let mut start = 0;
    let mut in_sigs = false;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        if in_sigs && !line.starts_with(SIG_PREFIX) {
            notes.push(&text[start..pos]);
            start = pos;
            in_sigs = false;
        }
        if line == "\n" {
            in_sigs = true;
        }
        pos += line.len();
    }
    let tail = &text[start..];
    let torn = if in_sigs && tail.ends_with('\n') && !tail.ends_with("\n\n") {
        notes.push(tail);
        false
    } else {
        !tail.is_empty()
    };
    (notes, torn)
}

#[cfg(test)]
mod tests;
