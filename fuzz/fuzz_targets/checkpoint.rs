//! What an auditor's tools read from elsewhere: checkpoint notes, verifier keys and proofs.
//! Never panic; a checkpoint body that parses prints back to the same bytes it came from when
//! it has no extension lines.
#![no_main]

use ecl_gate::checkpoint::{
    parse_note, parse_verifier, split_notes, verify_checkpoint, Checkpoint, NoteSigner,
};
use ecl_gate::merkle::{verify_consistency, verify_inclusion, Hash};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // TEST FIXTURE ONLY: a fixed-seed key.
        let signer = NoteSigner::new(
            "ecl-gate/fuzz",
            ed25519_dalek::SigningKey::from_bytes(&[3; 32]),
        )
        .expect("a valid key name");
        let key = signer.verifying_key();
        let (notes, _) = split_notes(text);
        for note in notes {
            let _ = parse_note(note);
            let _ = verify_checkpoint(note, &key);
        }
        if let Ok(cp) = Checkpoint::parse_body(text) {
            if text.lines().count() == 3 {
                assert_eq!(cp.body(), text, "a checkpoint body is not a fixed point");
            }
        }
        let _ = parse_verifier(text);
    }
    // The rest as a proof: two sizes and a path of whole hashes.
    if data.len() >= 16 {
        let (sizes, rest) = data.split_at(16);
        let a = u64::from_le_bytes(sizes[..8].try_into().unwrap_or_default());
        let b = u64::from_le_bytes(sizes[8..].try_into().unwrap_or_default());
        let hashes: Vec<Hash> = rest
            .chunks_exact(32)
            .map(|c| c.try_into().unwrap_or_default())
            .collect();
        if let Some((leaf, path)) = hashes.split_first() {
            let _ = verify_inclusion(a, b, leaf, path, leaf);
            let _ = verify_consistency(a, b, leaf, leaf, path);
        }
    }
});
