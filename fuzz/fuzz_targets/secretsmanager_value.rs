//! A Secrets Manager secret's value, written by anyone with PutSecretValue:
//! split into keys without panicking, every key a valid Secret key of the
//! secret its name says, and no key over Kubernetes' size limit.
#![no_main]

use credsync::manifest::SecretRef;
use credsync::secret::{MAX_SECRET_BYTES, SecretValue};
use credsync::secretsmanager::names::{Shape, Stored, expand};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, value)) = data.split_first() else {
        return;
    };
    let stored = if kind % 2 == 0 {
        Stored::Text(SecretValue::new(value.to_vec()))
    } else {
        Stored::Binary(SecretValue::new(value.to_vec()))
    };
    let shape = if kind % 4 < 2 {
        Shape::Members("team-a/db".to_owned())
    } else {
        Shape::Whole("team-a/db/KEY".to_owned())
    };
    let out = expand(&shape, stored);
    for part in &out.parts {
        assert_eq!(part.target.secret, SecretRef::new("team-a", "db"));
        assert!(part.value.expose().len() <= MAX_SECRET_BYTES);
    }
});
