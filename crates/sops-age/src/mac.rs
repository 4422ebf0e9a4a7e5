//! The MAC: SHA-512 over the leaves in document order (`sops.go`).

use zeroize::Zeroizing;

use crate::go::go_float;
use crate::tree::Node;

/// First bytes hashed into a MAC when `mac_only_encrypted` is set
/// (`sops.go`, `MACOnlyEncryptedInitialization`: sha256("sops")).
pub(crate) const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// The bytes a leaf contributes to the MAC (`sops.go`, `ToBytes`).
pub(crate) fn mac_bytes(leaf: &Node) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(match leaf {
        Node::Str(s) => s.to_vec(),
        Node::Int(text) => text.clone().into_bytes(),
        Node::Float(f) => go_float(*f).into_bytes(),
        Node::Bool(true) => b"True".to_vec(),
        Node::Bool(false) => b"False".to_vec(),
        Node::Null | Node::Map(_) | Node::Seq(_) => Vec::new(),
    })
}

pub(crate) fn upper_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}
